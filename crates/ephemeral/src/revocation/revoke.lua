-- Stores a revocation and announces it, in one atomic call.
--
-- KEYS[1]  the sorted set of one kind of revocation: member -> expiry
-- ARGV[1]  the member (a jti, or "issued_before:user")
-- ARGV[2]  its expiry, seconds since the Unix epoch
-- ARGV[3]  the channel that announces revocations
-- ARGV[4]  the announcement
--
-- Expired members are dropped on the way; the set itself expires with the
-- last of them. Returns 0 for a revocation already expired (nothing done).
local now = tonumber(redis.call('TIME')[1])
local expiry = tonumber(ARGV[2])
if expiry <= now then
  return 0
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local known = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if known == nil or known < expiry then
  redis.call('ZADD', KEYS[1], expiry, ARGV[1])
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(last[2])))
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
