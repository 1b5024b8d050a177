-- Takes tokens from GCRA buckets of one rate, one bucket per key: the
-- steps of gcra.rs, on Redis's clock, in one atomic call.
--
-- KEYS[i]       a bucket: its TAT in microseconds, absent when full
-- ARGV[1]       the emission interval, microseconds
-- ARGV[2]       the tolerance (burst x interval), microseconds
-- ARGV[2 + i]   how many tokens to take from KEYS[i]
--
-- Returns, per key, {granted, wait}: wait is how many microseconds until
-- the bucket holds one more token when fewer were granted than wanted.
-- A bucket's key expires when it would be full again.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local result = {}
for i, key in ipairs(KEYS) do
  local want = tonumber(ARGV[2 + i])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then
    tat = now
  end
  local available = 0
  if tolerance > tat - now then
    available = math.floor((tolerance - (tat - now)) / interval)
  end
  local granted = math.min(want, available)
  tat = tat + granted * interval
  if granted > 0 then
    -- %.0f: Lua would write a number this large with 14 digits only.
    redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
  end
  local wait = 0
  if granted < want then
    wait = math.max(0, tat + interval - now - tolerance)
  end
  result[i] = {granted, wait}
end
return result
