"""SQLite storage: schema and migrations, the single writer, readers, the metadata cache."""
