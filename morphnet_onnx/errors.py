"""The one exception type users see. The CLI prints its message on one line and exits 2."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's text (its type's name when it has none), for one-line errors."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:limit]


def native_reason(exc: BaseException, limit: int = 300) -> str:
    """What a native onnxruntime error says went wrong: its text leads with the source file and a C++
    signature, and the reason follows the failed check ("... was false. The gradient builder ...")."""
    text = str(exc).strip()
    text = text.splitlines()[-1] if text else type(exc).__name__
    if text.startswith("/onnxruntime_src/") and ") " in text:  # after the function's signature
        text = text.rsplit(") ", 1)[1]
    if " was false. " in text:
        text = text.split(" was false. ", 1)[1]
    return text[:limit]


class MorphNetError(Exception):
    """A problem with the user's input that they can act on (bad file, bad option, unmet budget)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during training: a KeyboardInterrupt that says where the last checkpoint is
    and how to continue; the CLI prints it on one line and exits 130."""
