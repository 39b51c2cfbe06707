import type { NatsConnection } from "nats";
import { FleetswanError, UnavailableError, NATS_CLI_OPTIONS, NATS_CLI_USAGE, type NatsCliValues } from "@fleetswan/common";
import { controller as api } from "@fleetswan/proto";
import { subjects } from "./layout.js";

/** The NATS flags every controller command accepts (shared by all services: @fleetswan/common). */
export const NATS_OPTIONS = NATS_CLI_OPTIONS;
export const NATS_USAGE = NATS_CLI_USAGE;
export type NatsArgs = NatsCliValues;

/** Controller API client: protobuf over NATS request/reply. */
export class ControllerClient {
  constructor(readonly nc: NatsConnection, readonly timeoutMs = 30_000) {}

  async #call<T>(method: string, body: Uint8Array, decode: (b: Uint8Array) => T): Promise<T> {
    let m;
    try {
      m = await this.nc.request(subjects.controllerApi(method), body, { timeout: this.timeoutMs });
    } catch (e) {
      const msg = (e as Error).message;
      throw new UnavailableError(/no responders|^503$/i.test(msg) ? "no controller is running (no responders on the Controller API)" : `controller did not answer ${method}: ${msg}`, { method }, { cause: e });
    }
    const code = m.headers?.get("Fleetswan-Error-Code");
    if (code && method === "GetFleetStatus") throw new FleetswanError(code, decodeURIComponent(m.headers?.get("Fleetswan-Error") ?? ""));
    return decode(m.data);
  }

  apply(req: Partial<api.ApplySpecRequest>): Promise<api.ApplySpecResponse> {
    return this.#call("ApplySpec", api.ApplySpecRequest.encode(api.ApplySpecRequest.fromPartial(req)).finish(), api.ApplySpecResponse.decode);
  }
  diff(req: Partial<api.ApplySpecRequest>): Promise<api.ApplySpecResponse> {
    return this.#call("DiffSpec", api.ApplySpecRequest.encode(api.ApplySpecRequest.fromPartial(req)).finish(), api.ApplySpecResponse.decode);
  }
  getSpec(revision = 0): Promise<api.GetSpecResponse> {
    return this.#call("GetSpec", api.GetSpecRequest.encode({ revision: BigInt(revision) }).finish(), api.GetSpecResponse.decode);
  }
  status(): Promise<api.FleetStatus> {
    return this.#call("GetFleetStatus", api.GetFleetStatusRequest.encode({}).finish(), api.FleetStatus.decode);
  }
  enroll(gateway: string, ttlSeconds = 0): Promise<api.EnrollGatewayResponse> {
    return this.#call("EnrollGateway", api.EnrollGatewayRequest.encode({ gateway, ttlSeconds }).finish(), api.EnrollGatewayResponse.decode);
  }
  command(verb: string, target: string, timeoutMs = 0): Promise<api.ConnectionCommandResponse> {
    return this.#call("ConnectionCommand", api.ConnectionCommandRequest.encode({ verb, target, timeoutMs }).finish(), api.ConnectionCommandResponse.decode);
  }
}

/** Throw the ApiError of a reply as a FleetswanError (the CLI prints code and message). */
export function throwIf(error: api.ApiError | undefined): void {
  if (error?.code) throw new FleetswanError(error.code, error.message, { locations: error.locations });
}
