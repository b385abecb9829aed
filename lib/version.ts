/** This build's version, sent in every hello and welcome (kept equal to package.json by a test). */
export const VERSION = '0.1.0';
export const SOFTWARE = `builder ${VERSION}`;
