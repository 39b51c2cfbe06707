export * from './util.js';
export * from './nats.js';
export * from './netns.js';
