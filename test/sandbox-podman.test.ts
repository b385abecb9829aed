import { describe } from 'vitest';
import { BASE_IMAGE, engineUsable } from './containers.js';
import { containerSuite } from './sandbox-container-suite.js';
import { conformanceSuite } from './sandbox-conformance.js';

describe.runIf(engineUsable('podman'))('podman', () => {
  conformanceSuite('podman', ['--sandbox', 'podman', '--image', BASE_IMAGE]);
  containerSuite('podman');
});
