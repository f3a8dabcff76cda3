"""Files that people give the scripts: list files, CSVs, images. Only regular files are opened (a FIFO would block
the reader forever, a device never end), text is read as UTF-8, and every error names the file and the line."""

import csv
import hashlib
import io
import os
import stat

# The characters where str.splitlines ends a line: a name holding one cannot be one line of a text file.
LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
FILE_KINDS = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket"}


class NotRegularFileError(OSError):
    """A path that is a folder, a FIFO, a device or a socket where a file is read."""


def file_kind(mode) -> str:
    for test, kind in FILE_KINDS.items():
        if test(mode):
            return kind
    return "a device"


def check_regular_file(path):
    """Raises a NotRegularFileError (or the FileNotFoundError, PermissionError of os.stat) unless `path`, links
    followed, is a regular file."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(f"{path} is not a regular file but {file_kind(mode)}")


def open_regular_file(path):
    """`path` opened for binary reading if it is a regular file (links followed); anything else is refused with a
    NotRegularFileError, without the wait that opening a FIFO would start."""
    file = open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK))
    try:
        mode = os.fstat(file.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{os.fspath(path)} is not a regular file but {file_kind(mode)}")
        os.set_blocking(file.fileno(), True)
        return file
    except BaseException:
        file.close()
        raise


def file_sha256(path) -> str:
    """The SHA-256 of a file's content, in hex."""
    digest = hashlib.sha256()
    with open_regular_file(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shown(text, limit=80) -> str:
    """`text` for a message: as it is when printable, else its repr (with the bytes of a file name that are not
    UTF-8 as bytes); cut to about `limit` characters."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # surrogate escapes: the file system's bytes that are not UTF-8
        text = repr(os.fsencode(text))
    else:
        text = text if text.isprintable() else repr(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_text(path) -> str:
    """The content of a UTF-8 text file (an initial byte-order mark is dropped); a file that is not UTF-8 is a
    ValueError naming its first bad line and byte."""
    with open_regular_file(path) as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{os.fspath(path)} line {line} is not UTF-8 text (byte {data[e.start]:#04x}): save the file as UTF-8"
        ) from None


def read_lines(path) -> list:
    """The lines of a UTF-8 text file without their ends ("\\n" or "\\r\\n"): only "\\n" ends a line."""
    lines = read_text(path).split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def csv_records(path):
    """(line number, fields) of every record of a UTF-8 CSV file, the line being where the record starts; a
    record that csv cannot read (an unclosed quote, a field over csv.field_size_limit(), 128 KiB) is a
    ValueError naming its line."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise ValueError(f"{os.fspath(path)} line {start}: {e}") from None
        yield start, fields
        start = reader.line_num + 1
