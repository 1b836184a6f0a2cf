"""Resources: the book of resources and their actors (one task and mailbox each),
the SQLite store, property validation and the message catalog for labels."""
