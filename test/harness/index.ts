export * from './util.js';
export * from './nats.js';
