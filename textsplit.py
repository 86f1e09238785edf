"""Split long text into Discord-sized messages without breaking code blocks."""

from __future__ import annotations

DISCORD_LIMIT = 2000


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Split ``text`` at line boundaries into chunks of at most ``limit`` characters.

    A chunk that ends inside a fenced code block is closed with ``` and the next chunk reopens
    the fence (with its language), so every chunk renders on its own. Lines longer than a chunk
    are cut hard, as a last resort.
    """
    if limit < 20:
        raise ValueError("limit too small")
    text = text.strip("\n")
    if not text:
        return []
    if len(text) <= limit:
        return [text]

    chunks: list[str] = []
    current: list[str] = []
    size = 0
    fence: str | None = None  # the opening fence line of the block we are inside, e.g. "```py"

    def room() -> int:
        # Reserve space for a closing fence when we are inside a block.
        return limit - (4 if fence else 0)

    def flush() -> None:
        nonlocal current, size
        body = "\n".join(current)
        if fence:
            body += "\n```"
        if body.strip() and body.strip() != "```":
            chunks.append(body)
        current = [fence] if fence else []
        size = len(fence) if fence else 0

    for line in text.split("\n"):
        pieces = [line]
        max_line = limit - 8 - (len(fence) + 1 if fence else 0)
        if len(line) > max_line:
            pieces = [line[i:i + max_line] for i in range(0, len(line), max_line)]
        for piece in pieces:
            extra = len(piece) + (1 if current else 0)
            if size + extra > room():
                flush()
                extra = len(piece) + (1 if current else 0)
            current.append(piece)
            size += extra
            stripped = piece.strip()
            if stripped.startswith("```"):
                # A fence line toggles the block; "```py" opens, a bare "```" closes.
                if fence is None:
                    if stripped.count("```") == 1:
                        fence = stripped
                elif stripped == "```" or stripped.endswith("```"):
                    fence = None
    if current and "\n".join(current).strip() not in ("", fence or ""):
        body = "\n".join(current)
        if fence:
            body += "\n```"
        chunks.append(body)
    return chunks
