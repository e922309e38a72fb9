"""A client process for the kill tests: builds a workflow on the taskiq backend (from the
environment), prints its key, then runs it (``run``) or closes an open swarm (``close``).
With ``MAGEFLOW_FAULT_DIR`` armed it is killed (exit 137) right after that transition,
before its publish."""

from __future__ import annotations

import asyncio
import sys

from mageflow import Mageflow
from mageflow.testing import contract_tasks


async def main(mode: str, ns: str) -> None:
    mf = Mageflow()
    contract_tasks.register(mf)
    if mode == "run":
        wf = await mf.chain(
            [await mf.sign("contract.echo", step=1), await mf.sign("contract.echo", ns=ns, step=2)],
            success=await mf.sign("contract.collect", ns=ns, tag="done"),
        )
        print(wf.key, flush=True)
        await wf.aio_run_no_wait({"ns": ns})
    else:
        sw = await mf.swarm(
            success_callbacks=[await mf.sign("contract.total", ns=ns)], is_swarm_closed=False
        )
        print(sw.key, flush=True)
        await sw.aio_run_no_wait({"ns": ns})
        for i in range(3):
            await sw.add_task(await mf.sign("contract.add", x=i, y=1))
        await sw.close_swarm()
    print("survived", flush=True)
    await mf.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
