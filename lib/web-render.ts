/**
 * How the web view looks: Handlebars pages from web/ (escaped by default: a job name or console line
 * never becomes markup), console lines with their ANSI colours, the status badge and the duration
 * chart as small server-rendered SVG, and line diffs for comparing two runs.
 */
import fs from 'node:fs';
import path from 'node:path';
import { AnsiUp } from 'ansi_up';
import { diffLines } from 'diff';
import Handlebars from 'handlebars';
import type { ConsoleLine, RunSummary } from '../protocol/types.js';
import { describeOutcome } from '../protocol/types.js';
import { formatElapsed, formatProgress, formatTime, runStatus } from './client-commands.js';
import { PACKAGE_ROOT } from './platform.js';

export const WEB_DIR = path.join(PACKAGE_ROOT, 'web');

const STREAM_CLASS: Record<ConsoleLine['stream'], string> = { out: 'out', err: 'err', builder: 'note' };

/** One console line as HTML: time, stream and the text with its colours (everything else escaped). */
export function consoleLineHtml(line: ConsoleLine, number: number): string {
  const ansi = new AnsiUp();
  ansi.use_classes = true;
  const text = ansi.ansi_to_html(line.text);
  return `<div class="line ${STREAM_CLASS[line.stream]}" id="L${number}"><a class="at" href="#L${number}">${(line.at / 1000).toFixed(3)}</a>`
    + `<span class="text">${text}</span></div>\n`;
}

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Human size: 1.2 MiB. */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function runDurationMs(run: RunSummary): number | null {
  if (run.startedAt === null) return null;
  return (run.finishedAt ?? Date.now()) - run.startedAt;
}

/** An artifact path as it goes into a URL: each segment encoded, the slashes kept. */
export function pathUri(artifactPath: string): string {
  return artifactPath.split('/').map(encodeURIComponent).join('/');
}

/** A run as the pages show it. */
export function runView(run: RunSummary): Record<string, unknown> {
  const duration = runDurationMs(run);
  return {
    ...run,
    status: runStatus(run),
    outcomeText: run.state === 'finished' ? describeOutcome(run.outcome) : run.state,
    queued: formatTime(run.queuedAt),
    started: formatTime(run.startedAt),
    finished: formatTime(run.finishedAt),
    duration: duration === null ? '-' : formatElapsed(duration),
    progressText: run.progress === null || run.progress === undefined ? null : formatProgress(run.progress),
    progressPercent: run.progress?.percent ?? null,
  };
}

const BADGE_COLOURS: Record<string, string> = { success: '#2e7d32', failed: '#c62828', running: '#1565c0', queued: '#6d6d6d', none: '#9e9e9e' };

/** A shields-style badge: the job's name, and the status of its last finished run. */
export function badgeSvg(label: string, status: string): string {
  const width = (text: string): number => 10 + Math.round(text.length * 6.5);
  const left = width(label);
  const right = width(status);
  const colour = BADGE_COLOURS[status] ?? BADGE_COLOURS.none;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${left + right}" height="20" role="img" aria-label="${escapeHtml(label)}: ${escapeHtml(status)}">`
    + `<title>${escapeHtml(label)}: ${escapeHtml(status)}</title>`
    + `<rect width="${left}" height="20" fill="#555"/><rect x="${left}" width="${right}" height="20" fill="${colour}"/>`
    + '<g fill="#fff" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11" text-anchor="middle">'
    + `<text x="${left / 2}" y="14">${escapeHtml(label)}</text><text x="${left + right / 2}" y="14">${escapeHtml(status)}</text></g></svg>`;
}

/** Bars of the durations of finished runs, oldest on the left, coloured by status. */
export function durationChartSvg(runs: RunSummary[]): string {
  const finished = runs.filter((run) => run.state === 'finished' && run.startedAt !== null).slice(0, 40).reverse();
  if (finished.length === 0) return '';
  const width = 600;
  const height = 120;
  const max = Math.max(...finished.map((run) => runDurationMs(run) ?? 0), 1);
  const bar = width / finished.length;
  const bars = finished.map((run, index) => {
    const ms = runDurationMs(run) ?? 0;
    const h = Math.max(2, Math.round((ms / max) * (height - 20)));
    const status = runStatus(run);
    return `<a href="/run/${run.uuid}"><rect class="${status}" x="${(index * bar + 1).toFixed(1)}" y="${height - h}" width="${Math.max(1, bar - 2).toFixed(1)}" height="${h}">`
      + `<title>${escapeHtml(formatTime(run.startedAt))}: ${escapeHtml(formatElapsed(ms))} (${status})</title></rect></a>`;
  }).join('');
  return `<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" role="img" aria-label="durations of the last ${finished.length} runs">`
    + `<text x="2" y="12" class="axis">${escapeHtml(formatElapsed(max))}</text>${bars}</svg>`;
}

/** A line diff as rows for the compare page. */
export function lineDiff(a: string, b: string): { kind: 'same' | 'added' | 'removed'; text: string }[] {
  return diffLines(a, b).flatMap((part) => {
    const kind = part.added ? 'added' as const : part.removed ? 'removed' as const : 'same' as const;
    const lines = part.value.endsWith('\n') ? part.value.slice(0, -1).split('\n') : part.value.split('\n');
    return lines.map((text) => ({ kind, text }));
  });
}

type Page = (context: unknown) => string;

/** The pages, compiled once; each renders inside layout.hbs. */
export class Pages {
  private readonly pages = new Map<string, Page>();
  private readonly layout: Page;
  private readonly hb = Handlebars.create();

  constructor(dir = WEB_DIR) {
    this.hb.registerHelper('time', (ms: unknown) => (typeof ms === 'number' ? formatTime(ms) : '-'));
    this.hb.registerHelper('bytes', (n: unknown) => (typeof n === 'number' ? formatBytes(n) : '-'));
    this.hb.registerHelper('eq', (a: unknown, b: unknown) => a === b);
    this.hb.registerHelper('uri', (text: unknown) => encodeURIComponent(String(text)));
    // An artifact path keeps its slashes in links (each segment encoded).
    this.hb.registerHelper('pathUri', (text: unknown) => pathUri(String(text)));
    this.hb.registerHelper('short', (uuid: unknown) => String(uuid).slice(0, 8));
    for (const file of fs.readdirSync(dir)) {
      if (!file.endsWith('.hbs')) continue;
      this.pages.set(file.slice(0, -4), this.hb.compile(fs.readFileSync(path.join(dir, file), 'utf8'), { strict: false }));
    }
    const layout = this.pages.get('layout');
    if (layout === undefined) throw new Error(`no layout.hbs in ${dir}`);
    this.layout = layout;
  }

  /** A whole page: `page` rendered with `model`, inside the layout. */
  render(page: string, title: string, model: Record<string, unknown>, nav = ''): string {
    const body = this.pages.get(page);
    if (body === undefined) throw new Error(`no page ${page}.hbs`);
    return this.layout({ title, nav, body: new Handlebars.SafeString(body(model)) });
  }
}
