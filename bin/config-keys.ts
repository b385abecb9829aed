/**
 * The options each program reads from its config file and from BUILDER_* environment variables
 * (see lib/config.ts). To make a new option configurable, add one line to its program's list: the
 * long option name exactly as on the command line, and its type. Choices come from the option's
 * yargs declaration; a name or type that does not match the yargs option is refused at start.
 * The order here is the order of --print-config.
 */
import type { ConfigSpec } from '../lib/config.js';

export const SERVER_CONFIG: ConfigSpec = {
  name: 'server',
  keys: {
    listen: 'string',
    'state-dir': 'path',
    templates: 'path',
    'job-timeout': 'string',
    heartbeat: 'string',
    'max-frame-bytes': 'number',
    strict: 'boolean',
    'max-artifact-bytes': 'number',
    'max-run-artifact-bytes': 'number',
    'max-line-bytes': 'number',
    'max-console-bytes': 'number',
    'max-connections-per-address': 'number',
    'min-free-bytes': 'number',
    'hello-timeout': 'string',
    'observer-backlog-bytes': 'number',
    'tls-cert': 'path',
    'tls-key': 'path',
    'allow-plaintext': 'boolean',
    'keep-runs': 'number',
    'vacuum-every': 'string',
    http: 'string',
    notify: 'list',
    'notify-secret-file': 'path',
    'notify-attempts': 'number',
    'notify-backoff': 'string',
    'public-url': 'string',
    'forget-workers-after': 'string',
  },
};

/** Everything but the positional PLATFORM, which stays on the command line. */
export const WORKER_CONFIG: ConfigSpec = {
  name: 'worker',
  keys: {
    remote: 'string',
    labels: 'comma-list',
    loop: 'boolean',
    hostname: 'string',
    'tls-ca': 'path',
    tls: 'boolean',
    'token-file': 'path',
    'tmp-dir': 'path',
    sandbox: 'string',
    image: 'string',
    memory: 'string',
    cpus: 'string',
    pids: 'number',
    network: 'string',
  },
};

/** Only the global options; per-command options are not configurable. */
export const CLIENT_CONFIG: ConfigSpec = {
  name: 'client',
  keys: {
    remote: 'string',
    'token-file': 'path',
    'tls-ca': 'path',
    tls: 'boolean',
  },
};
