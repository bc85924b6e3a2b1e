-- Requests that matched no declared route, counted by method and path shape: the start of
-- shadow-API detection. Shapes are normalised (ids replaced by {id}), so the table stays small.
CREATE TABLE undeclared_endpoints (
    method      TEXT    NOT NULL,
    shape       TEXT    NOT NULL,
    hits        INTEGER NOT NULL,
    first_seen  INTEGER NOT NULL,  -- Unix seconds
    last_seen   INTEGER NOT NULL,
    PRIMARY KEY (method, shape)
);
