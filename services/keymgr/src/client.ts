/** A typed client of the keymgr NATS API (used by the controller and `fleetswan secrets`). */
import type { NatsConnection } from "nats";
import { FleetswanError, UnavailableError, type Secret } from "@fleetswan/common";
import { keymgr } from "@fleetswan/proto";
import { SUBJECT } from "./layout.js";

type Codec<T> = { encode(m: T): { finish(): Uint8Array }; decode(b: Uint8Array): T };

export class KeymgrClient {
  constructor(private readonly nc: NatsConnection, private readonly timeoutMs = 10_000) {}

  async #call<Req, Res extends { error?: keymgr.KeymgrError | undefined }>(method: string, reqCodec: Codec<Req>, req: Req, resCodec: Codec<Res>): Promise<Res> {
    let data: Uint8Array;
    try {
      data = (await this.nc.request(SUBJECT.api(method), reqCodec.encode(req).finish(), { timeout: this.timeoutMs })).data;
    } catch (e) {
      throw new UnavailableError(`keymgr ${method}: ${(e as Error).message}`, { method });
    }
    const res = resCodec.decode(data);
    if (res.error && res.error.code) throw new FleetswanError(res.error.code, res.error.message, { method });
    return res;
  }

  storeSecret(name: string, value: Secret, gateways: string[]): Promise<keymgr.SecretInfo> {
    return this.#call("StoreSecret", keymgr.StoreSecretRequest, { name, value: value.reveal(), gateways }, keymgr.SecretInfo);
  }
  generateSecret(name: string, gateways: string[]): Promise<keymgr.SecretInfo> {
    return this.#call("GenerateSecret", keymgr.GenerateSecretRequest, { name, gateways }, keymgr.SecretInfo);
  }
  sealForAgents(name: string, gateways: string[]): Promise<keymgr.SealForAgentsResponse> {
    return this.#call("SealForAgents", keymgr.SealForAgentsRequest, { name, gateways }, keymgr.SealForAgentsResponse);
  }
  rotateSecret(name: string, windowSeconds = 0, value?: Secret): Promise<keymgr.SecretInfo> {
    return this.#call("RotateSecret", keymgr.RotateSecretRequest, { name, windowSeconds, value: value?.reveal() ?? new Uint8Array() }, keymgr.SecretInfo);
  }
  issueCertificate(req: Partial<keymgr.IssueCertificateRequest> & { gateway: string }): Promise<keymgr.IssueCertificateResponse> {
    return this.#call("IssueCertificate", keymgr.IssueCertificateRequest, keymgr.IssueCertificateRequest.fromPartial(req), keymgr.IssueCertificateResponse);
  }
  deleteSecret(name: string): Promise<keymgr.DeleteSecretResponse> {
    return this.#call("DeleteSecret", keymgr.DeleteSecretRequest, { name }, keymgr.DeleteSecretResponse);
  }
  async listSecrets(): Promise<keymgr.ListSecretsResponse> {
    return this.#call("ListSecrets", keymgr.ListSecretsRequest, {}, keymgr.ListSecretsResponse as Codec<keymgr.ListSecretsResponse & { error?: undefined }>);
  }
}
