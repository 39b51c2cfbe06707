/**
 * `fleetswan-lab up --kernel`: the lab's fleet inside User-Mode Linux with the xfrm backend
 * (kernel ESP), strongSwan on kernel-netlink. The guest runs the very same `up` (all
 * tunnels up, pings through each); here we check its result and the kernel's own SAs.
 * Opt-in (FLEETSWAN_E2E_KERNEL=1): node under UML's ptrace makes it take minutes.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { kernelDown, kernelExec, kernelUp } from '@fleetswan/lab/kernel';
import { REPO, logger } from './common.js';
import { skipReason, needRoot, needExecutable } from '../harness/util.js';

const on = process.env.FLEETSWAN_E2E_KERNEL === '1';
const skip = on ? skipReason(needRoot(), needExecutable('/usr/bin/linux.uml')) : 'kernel lab: set FLEETSWAN_E2E_KERNEL=1 (User-Mode Linux, several minutes)';
const log = logger('kernel');
const dir = '/var/tmp/fleetswan-lab-kernel-e2e';

describe('e2e kernel lab (UML, xfrm backend)', { skip: skip ?? false, timeout: 1_500_000 }, () => {
  after(async () => {
    if (process.env.FLEETSWAN_KEEP_LAB !== '1') await kernelDown({ dir, step: log });
  });

  test('up --kernel: every tunnel up and pinged inside the guest; kernel XFRM carries plain ESP', async () => {
    const t0 = Date.now();
    const rc = await kernelUp({ repoDir: REPO, dir, step: log, timeoutMs: 1_200_000 });
    const upLog = existsSync(join(dir, 'up.log')) ? readFileSync(join(dir, 'up.log'), 'utf8') : '';
    log(`guest up: exit ${rc} after ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    assert.equal(rc, 0, `fleetswan-lab up --backend xfrm failed inside UML:\n${upLog.slice(-4000)}`);
    const x = await kernelExec({ dir }, 'ip netns exec fslab-gw-a ip -s xfrm state; ip netns exec fslab-gw-a ip xfrm policy | grep -c "dir out"');
    log(`gw-a kernel SAs:\n${x.output}`);
    assert.match(x.output, /proto esp/, 'gw-a has ESP SAs in the kernel');
  });
});
