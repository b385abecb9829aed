import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 90_000,
    hookTimeout: 60_000,
    // Integration tests start real servers and workers; two files at a time suits a 2-core machine.
    maxWorkers: 2,
    // testcontainers: its reaper container would come from a registry (tests remove their own
    // containers), and with dockerd --bridge=none it cannot find the host through a bridge network.
    env: { TESTCONTAINERS_RYUK_DISABLED: 'true', TESTCONTAINERS_HOST_OVERRIDE: '127.0.0.1' },
  },
});
