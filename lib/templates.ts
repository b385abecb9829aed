/**
 * Job templates: Handlebars files, one per template and platform, at DIR/TEMPLATE/PLATFORM.sh.hbs.
 * They are read and rendered when a run is dispatched, so fixing a template reaches the next run.
 * Rendering is strict (a variable the template uses but the job does not give is an error) and does
 * not HTML-escape: the output is a shell script, and `{{var}}` inserts the value exactly as given.
 * Templates that interpolate into shell should quote, e.g. '{{repository}}'.
 */
import fs from 'node:fs';
import path from 'node:path';
import Handlebars from 'handlebars';
import type { Vars } from '../protocol/types.js';
import { NAME_PATTERN } from '../protocol/types.js';

const SUFFIX = '.sh.hbs';

export interface RenderContext {
  job: string;
  platform: string;
  uuid: string;
}

export class TemplateError extends Error {}

/** The names in a directory; none if it is missing, not a directory (a README beside the templates) or unreadable. */
function entries(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch {
    return [];
  }
}

export class Templates {
  constructor(readonly dir: string) {}

  /** Platforms that have a variant of `template` (empty if the template does not exist). */
  platformsOf(template: string): string[] {
    if (!NAME_PATTERN.test(template)) return [];
    return entries(path.join(this.dir, template)).filter((name) => name.endsWith(SUFFIX)).map((name) => name.slice(0, -SUFFIX.length)).sort();
  }

  list(): string[] {
    return entries(this.dir).filter((name) => this.platformsOf(name).length > 0).sort();
  }

  /** Renders a template for a platform. Throws TemplateError with a message a user can act on. */
  render(template: string, platform: string, vars: Vars, context: RenderContext): string {
    const platforms = this.platformsOf(template);
    if (platforms.length === 0) {
      const known = this.list();
      throw new TemplateError(`unknown template ${template}; templates in ${this.dir}: ${known.length > 0 ? known.join(', ') : 'none'}`);
    }
    if (!platforms.includes(platform)) {
      throw new TemplateError(`template ${template} has no variant for platform ${platform}; it has: ${platforms.join(', ')}`);
    }
    const file = path.join(this.dir, template, `${platform}${SUFFIX}`);
    let source: string;
    try {
      source = fs.readFileSync(file, 'utf8');
    } catch (error) {
      throw new TemplateError(`template ${template} for ${platform}: cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
    }
    try {
      const compiled = Handlebars.compile(source, { strict: true, noEscape: true });
      return compiled({ ...vars, job: context.job, platform: context.platform, uuid: context.uuid });
    } catch (error) {
      const message = (error as Error).message;
      const missing = /"([^"]+)" not defined/.exec(message);
      if (missing) {
        throw new TemplateError(`template ${template} for ${platform} needs variable '${missing[1]}': give it with --var ${missing[1]}=VALUE`);
      }
      throw new TemplateError(`template ${template} for ${platform} (${file}) failed to render: ${message.split('\n')[0]}`);
    }
  }
}
