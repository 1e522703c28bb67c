"""The server's log handler writes in batches from a thread: no line lost, none twice, in order."""

from __future__ import annotations

import io
import logging
import threading
import time

from server.batched_log import MAX_PENDING_LINES, BatchedStreamHandler


def _logger(handler: logging.Handler, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


def test_every_line_is_written_once_and_in_order_while_the_writer_runs() -> None:
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, interval=0.001)  # the writer takes batches often
    logger = _logger(handler, "test.batched.order")
    try:
        for n in range(50_000):
            logger.info("line %d", n)
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert stream.getvalue().splitlines() == [f"line {n}" for n in range(50_000)]


def test_every_line_is_written_once_and_in_order_while_the_caller_flushes_too() -> None:
    """The server flushes from its own thread (before it announces that it serves) while the
    writer thread drains: the two must not lose, repeat or reorder lines."""
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, interval=0.0001)
    logger = _logger(handler, "test.batched.flush")
    try:
        for n in range(200_000):
            logger.info("line %d", n)
            if n % 50 == 0:
                handler.flush()
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert stream.getvalue().splitlines() == [f"line {n}" for n in range(200_000)]


def test_lines_reach_the_stream_without_a_flush_within_the_interval() -> None:
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, interval=0.05)
    logger = _logger(handler, "test.batched.interval")
    try:
        logger.info("hello")
        started = time.monotonic()
        while "hello" not in stream.getvalue() and time.monotonic() - started < 2:
            time.sleep(0.005)
        assert stream.getvalue() == "hello\n"
        assert time.monotonic() - started < 0.5  # the interval, plus scheduling slack
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_lines_from_many_threads_are_all_written_whole() -> None:
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, interval=0.001)
    logger = _logger(handler, "test.batched.threads")

    def write(thread: int) -> None:
        for n in range(5_000):
            logger.info("t%d-%d", thread, n)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        logger.removeHandler(handler)
        handler.close()
    lines = stream.getvalue().splitlines()
    assert sorted(lines) == sorted(f"t{t}-{n}" for t in range(4) for n in range(5_000))
    for t in range(4):  # each thread's own lines keep their order
        assert [x for x in lines if x.startswith(f"t{t}-")] == [f"t{t}-{n}" for n in range(5_000)]


def test_lines_written_as_they_are_keep_their_place_among_records() -> None:
    """A worker's lines, relayed as they are (server/log_setup.py), and our own records
    leave in the order they came."""
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, interval=0.0005)
    logger = _logger(handler, "test.batched.raw")
    try:
        for n in range(20_000):
            if n % 2:
                handler.write_line(f"line {n}")
            else:
                logger.info("line %d", n)
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert stream.getvalue().splitlines() == [f"line {n}" for n in range(20_000)]


class _Broken(io.StringIO):
    def write(self, _text: str) -> int:
        raise OSError("the pipe is gone")


def test_lines_that_cannot_be_written_are_counted_as_dropped() -> None:
    handler = BatchedStreamHandler(_Broken(), interval=10)  # nothing written until the flush
    logger = _logger(handler, "test.batched.broken")
    try:
        for n in range(3):
            logger.info("line %d", n)
        handler.flush()
        assert handler.dropped == 3
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_past_the_bound_of_pending_lines_new_ones_are_dropped_and_counted() -> None:
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, interval=10)
    try:
        with handler._draining:  # the writer is stuck in a write: nothing leaves the buffer
            for n in range(MAX_PENDING_LINES + 5):
                handler.write_line(f"line {n}")
            assert handler.dropped == 5
    finally:
        handler.close()
    assert stream.getvalue().splitlines()[-1] == f"line {MAX_PENDING_LINES - 1}"
