import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 90_000,
    hookTimeout: 60_000,
    // Integration tests start real servers and workers; two files at a time suits a 2-core machine.
    maxWorkers: 2,
  },
});
