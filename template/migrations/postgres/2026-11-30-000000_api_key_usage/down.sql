UPDATE api_keys SET request_count = counted.request_count, last_used_at = counted.last_used_at
FROM api_key_usage AS counted WHERE api_keys.id = counted.key_id;

DROP TABLE api_key_usage;
