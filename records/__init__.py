"""The bot's records in a database: the engine (``db``), the schema and its migrations (``schema``), and the
one-time import of data folders written before it (``legacy``). No discord here."""
