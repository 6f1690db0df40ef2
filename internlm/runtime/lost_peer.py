"""Telling "another process of the group is gone" apart from every other failure of a collective.

A rank killed, crashed or frozen shows up on the others as a failed collective: a closed connection
at once, or gloo's timeout once `trainer.collective_timeout_s` has passed. Such a failure says
nothing about this rank (its disk, its data): the run stops with one message and resumes from the
newest complete checkpoint.
"""

from __future__ import annotations

# What gloo and NCCL say when another process of the group is gone or no longer answers
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "remote process exited", "Broken pipe",
             "Timed out waiting", "Application timeout caused pair closure")  # the last two: gloo, past the timeout


def in_group() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def names_lost_peer(exc: BaseException) -> bool:
    """True when `exc` or its cause reads as a lost peer (DCP's CheckpointException prints each
    rank's error in its text); only meaningful inside a process group of several ranks."""
    import torch.distributed as dist

    error: BaseException | None = exc
    for _ in range(8):  # the cause chain, bounded
        if error is None:
            return False
        if isinstance(error, dist.DistError) or any(text in str(error) for text in PEER_LOST):
            return True
        error = error.__cause__  # explicit causes only: an error raised while handling one is not it
    return False


def lost_peer(exc: BaseException) -> bool:
    """True when a collective failed because another process of this run's group stopped."""
    return in_group() and names_lost_peer(exc)
