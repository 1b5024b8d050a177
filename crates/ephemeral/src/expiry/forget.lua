-- Forgets a room, if its deadline is still the one given (or always, with
-- an empty one). Returns 1 if it was forgotten.
-- KEYS[1] the sorted set room -> deadline; ARGV[1] the room; ARGV[2] the deadline or ''
if ARGV[2] ~= '' then
  local current = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
  if current ~= tonumber(ARGV[2]) then
    return 0
  end
end
return redis.call('ZREM', KEYS[1], ARGV[1])
