"""Where eval cells run: in this process, in local worker processes, or on a Dask cluster.

``--executor`` values: ``local`` (default: this process, one cell after another), ``processes:N`` (a
Dask ``LocalCluster`` of N single-threaded worker processes on loopback) and ``dask://HOST:PORT`` (an
existing Dask scheduler; start one with ``dask scheduler`` and ``dask worker tcp://HOST:PORT`` on each
machine). Dask rather than Ray: cells are coarse Python functions, Dask's distributed scheduler is a
small pure-Python dependency that runs on loopback in tests, and its futures API is ``concurrent.futures``.

Workers must have attnbench (and any third-party backend) installed. They never write to the store: each
returns its cell's rows, and the process that runs the CLI stores every cell once, whatever retries a
worker's death causes. Timing cells never run here: they stay on the machine that runs the CLI.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from ..errors import UserError

CellResult = tuple[Any, Any, BaseException | None]  # (item, result, error)


class LocalExecutor:
    """Runs every item in this process, in order."""

    name = "local"
    workers = 1

    def map_unordered(self, fn: Callable, context: Any, items: Iterable,
                      group: Callable[[Any], str] | None = None) -> Iterator[CellResult]:
        for item in items:
            try:
                yield item, fn(context, item), None
            except (KeyboardInterrupt, UserError):
                raise
            except Exception as exc:  # one failing cell must not lose the others; reported at the end
                yield item, None, exc

    def close(self) -> None:
        pass


class DaskExecutor:
    """Submits items to a Dask cluster and yields them as they complete."""

    def __init__(self, address: str | None = None, workers: int | None = None, threads: int = 1) -> None:
        from distributed import Client, LocalCluster

        self.cluster = None
        if address is None:
            # Workers inherit OMP_NUM_THREADS so torch does not oversubscribe the cores.
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                        dashboard_address=None, env={"OMP_NUM_THREADS": str(threads)})
            self.client = Client(self.cluster)
            self.name = f"processes:{workers}"
        else:
            self.client = Client(address, timeout="20s")
            self.name = address
        self.workers = max(1, len(self.client.scheduler_info()["workers"]))

    def map_unordered(self, fn: Callable, context: Any, items: Iterable,
                      group: Callable[[Any], str] | None = None) -> Iterator[CellResult]:
        """Submit every item; items of one ``group`` prefer the same worker (a worker that already holds a
        task's reference logits should evaluate that task's other backends), but may be stolen when idle.

        Each item is yielded once, when its result first arrives; ``fn`` must not write anything that
        should happen once (a worker that dies makes the scheduler run its items again)."""
        from distributed import as_completed

        context_future = self.client.scatter(context, broadcast=True)
        workers = sorted(self.client.scheduler_info()["workers"])
        homes: dict[str, str] = {}
        futures = {}
        for item in items:
            options = {}
            if group is not None and workers:
                home = homes.setdefault(group(item), workers[len(homes) % len(workers)])
                options = {"workers": [home], "allow_other_workers": True}
            futures[self.client.submit(fn, context_future, item, pure=False, **options)] = item
        try:
            for future in as_completed(list(futures)):
                item = futures.pop(future)
                try:
                    result, error = future.result(), None
                except Exception as exc:
                    result, error = None, exc
                # Released as soon as it is collected: a finished result the cluster no longer needs is not
                # recomputed when the worker holding it dies.
                future.release()
                yield item, result, error
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def make_executor(text: str, threads_per_worker: int = 1) -> LocalExecutor | DaskExecutor:
    """Parse ``--executor``: ``local``, ``processes:N`` or ``dask://HOST:PORT``."""
    if text == "local":
        return LocalExecutor()
    if text.startswith("processes:"):
        try:
            workers = int(text.split(":", 1)[1])
        except ValueError:
            workers = 0
        if workers < 1:
            raise UserError(f"--executor {text!r}: write processes:N with N >= 1 worker processes")
        return DaskExecutor(workers=workers, threads=threads_per_worker)
    if text.startswith(("dask://", "tcp://")):
        address = "tcp://" + text.split("://", 1)[1]
        try:
            return DaskExecutor(address=address)
        except OSError as exc:
            raise UserError(f"--executor {text!r}: cannot reach the Dask scheduler ({exc}); start one with "
                            "`dask scheduler` and workers with `dask worker tcp://HOST:PORT`") from None
    raise UserError(f"--executor {text!r}: use local, processes:N or dask://HOST:PORT")
