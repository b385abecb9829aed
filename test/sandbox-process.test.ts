import { conformanceSuite } from './sandbox-conformance.js';

conformanceSuite('process', []);
