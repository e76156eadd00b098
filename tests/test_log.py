"""esolm.log: the one progress logger writes the same stderr lines the old printers wrote."""
import contextlib
import io
import logging

from esolm.log import get_logger, log, printer


def test_a_prefix_is_bracketed_and_no_prefix_prints_the_message_alone(capsys):
    log("cached", "x", 3, prefix="esolm.data")
    printer("score")("scoring 8 samples")
    log("removed 2 path(s)")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "[esolm.data] cached x 3\n[score] scoring 8 samples\nremoved 2 path(s)\n"


def test_lines_follow_the_current_stderr_and_a_percent_sign_is_plain_text():
    held = io.StringIO()
    with contextlib.redirect_stderr(held):
        log("100% done", prefix="esolm.data")
    assert held.getvalue() == "[esolm.data] 100% done\n"


def test_an_application_root_handler_does_not_print_each_line_twice(capsys):
    root_stream = io.StringIO()
    handler = logging.StreamHandler(root_stream)
    logging.getLogger().addHandler(handler)
    try:
        log("once", prefix="score")
    finally:
        logging.getLogger().removeHandler(handler)
    assert capsys.readouterr().err == "[score] once\n" and root_stream.getvalue() == ""


def test_the_logger_can_be_silenced_with_the_stdlib(capsys):
    root = get_logger()
    root.setLevel(logging.WARNING)
    try:
        log("hidden", prefix="esolm.data")
    finally:
        root.setLevel(logging.INFO)
    assert capsys.readouterr().err == ""
