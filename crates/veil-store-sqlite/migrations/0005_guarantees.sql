-- A model uploaded by someone who may not publish models (a data scientist's, for validation)
-- is private: only its owner and reviewers see it.
ALTER TABLE models ADD COLUMN private INTEGER NOT NULL DEFAULT 0;

-- A dataset's global cap protects the people in the data, not the file: deleting a dataset
-- destroys its key but keeps its row (marked deleted, key emptied), so a new upload under the
-- same name carries over the cap and what was spent under it.
ALTER TABLE datasets ADD COLUMN deleted_at BIGINT;
