/** `fleetswan-lab up --kernel`: the same fleet inside User-Mode Linux (xfrm backend). */
export async function kernelUp(o: { repoDir: string; stateDir: string; step: (m: string) => void }): Promise<number> {
  o.step("--kernel: not implemented yet");
  return 1;
}
