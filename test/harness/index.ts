export * from './util.js';
export * from './nats.js';
export * from './netns.js';
export * from './capture.js';
export * from './peers.js';
export * from './kernel-lab.js';
