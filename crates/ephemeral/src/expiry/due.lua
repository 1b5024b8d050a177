-- The rooms whose deadline has passed on Redis's clock, earliest first.
-- KEYS[1] the sorted set room -> deadline (ms since the Unix epoch)
-- ARGV[1] the most rooms to return
-- Returns {room, deadline, room, deadline, ...}.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
