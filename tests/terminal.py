"""A minimal terminal emulator: what a user sees after a program wrote to a pseudo-terminal."""
import re
def render(data: bytes, width: int = 100) -> list[str]:
    """The screen lines after `data` was written to a `width`-column terminal (cursor moves, erases, wraps)."""
    text = data.decode("utf-8", "replace")
    lines, row, col = [[]], 0, 0
    pattern = re.compile(r"\x1b\[(\??)([0-9;]*)([A-Za-z])|\x1b\][^\x07]*\x07|([\r\n\b])|([^\x1b\r\n\b]+)")
    def put(ch):
        nonlocal row, col
        if col >= width:  # autowrap
            row, col = row + 1, 0
        while len(lines) <= row: lines.append([])
        line = lines[row]
        while len(line) < col: line.append(" ")
        if col < len(line): line[col] = ch
        else: line.append(ch)
        col += 1
    for m in pattern.finditer(text):
        private, args, cmd, control, chars = m.groups()
        if chars:
            for ch in chars: put(ch)
        elif control == "\r": col = 0
        elif control == "\n":
            row += 1
            while len(lines) <= row: lines.append([])
        elif control == "\b": col = max(0, col - 1)
        elif cmd and not private:
            n = int(args.split(";")[0]) if args and args.split(";")[0] else 1
            if cmd == "A": row = max(0, row - n)
            elif cmd == "B": row += n
            elif cmd == "G": col = n - 1
            elif cmd == "K":
                mode = int(args) if args else 0
                while len(lines) <= row: lines.append([])
                if mode == 2: lines[row] = []
                elif mode == 0: lines[row] = lines[row][:col]
    return ["".join(l).rstrip() for l in lines]


def run_in_terminal(command: list[str], env: dict, columns: int = 100, rows: int = 30, timeout: float = 600,
                    cwd=None) -> tuple[int, bytes]:
    """Run `command` with a pseudo-terminal of the given size as stdin, stdout and stderr."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import subprocess
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
                               cwd=cwd)
    os.close(slave)
    data, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        data += chunk
    os.close(master)
    return process.wait(timeout=30), data
