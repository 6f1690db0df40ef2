"""Which failures read as "another rank is gone": the rule that decides between the lost-peer
message (resume from the newest checkpoint) and a checkpoint-write failure (fix the disk)."""

from __future__ import annotations

import errno

from torch.distributed.checkpoint.api import CheckpointException, _wrap_exception

from internlm.runtime.lost_peer import names_lost_peer


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # with a traceback, as DCP wraps them
        return caught


def test_gloo_failures_of_a_gone_or_frozen_peer_read_as_lost():
    assert names_lost_peer(RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4567"))
    # what gloo raised in a 2-process run whose other rank slept past the group's 3 s timeout
    assert names_lost_peer(RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 3000ms for recv operation to complete"))
    # and what DDP's backward raised on the survivor of a SIGSTOPped rank (tests/reliability/test_lost_rank.py)
    assert names_lost_peer(RuntimeError("Application timeout caused pair closure"))


def test_a_dcp_write_that_failed_because_a_rank_died_reads_as_lost():
    died = _wrap_exception(raised(RuntimeError("Connection reset by peer")))
    assert names_lost_peer(CheckpointException("save failed", {1: died}))
    # and through a cause chain, as checkpoint.save re-raises it
    try:
        try:
            raise CheckpointException("save failed", {1: died})
        except CheckpointException as exc:
            raise RuntimeError("writing checkpoint 10: another rank stopped during the write") from exc
    except RuntimeError as outer:
        assert names_lost_peer(outer)


def test_a_full_disk_is_not_a_lost_peer():
    full = _wrap_exception(raised(OSError(errno.ENOSPC, "No space left on device")))
    assert not names_lost_peer(CheckpointException("save failed", {0: full}))
    assert not names_lost_peer(OSError(errno.EIO, "injected I/O error on rank 1 while writing checkpoint 10"))
    assert not names_lost_peer(RuntimeError("CUDA out of memory"))
