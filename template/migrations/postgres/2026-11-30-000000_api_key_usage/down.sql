-- The larger of the two: instances of 0.3.0 may have counted on in `api_keys` meanwhile.
UPDATE api_keys SET
    request_count = greatest(api_keys.request_count, counted.request_count),
    last_used_at = greatest(api_keys.last_used_at, counted.last_used_at)
FROM api_key_usage AS counted WHERE api_keys.id = counted.key_id;

DROP TABLE api_key_usage;
