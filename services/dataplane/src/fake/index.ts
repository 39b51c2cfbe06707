export { FakeBackend, type FakeBackendOptions, type FakeCall } from "./fake-backend.js";
