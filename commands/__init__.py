"""Cogs: one per file, each ending in ``async def setup(bot)``; ``bot.py`` loads them all."""
