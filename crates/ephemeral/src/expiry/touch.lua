-- Sets a room's deadline to Redis's now + a TTL; returns the deadline.
-- KEYS[1] the sorted set room -> deadline (ms since the Unix epoch)
-- ARGV[1] the room, ARGV[2] the TTL in ms
local time = redis.call('TIME')
local deadline = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], deadline, ARGV[1])
return deadline
