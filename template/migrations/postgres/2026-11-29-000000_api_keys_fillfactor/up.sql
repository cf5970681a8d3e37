-- Room on each page for new versions of its rows: usage flushes and quota blocks update rows all the
-- time, and an update that fits on its row's page (a HOT update) writes nothing to the indexes.
-- Pages already full stay so until rows move off them or the table is rewritten.
ALTER TABLE api_keys SET (fillfactor = 70);
