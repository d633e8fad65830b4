"""The pairing rules of a pool shared through Redis, as Lua scripts.

Redis runs each script atomically, so a script is the pool's one critical
section: whatever it reads (who waits, who is in cooldown with whom) stays
true until it has paired, queued or released the client it was called for.
The rules are those of :class:`roulette.core.MemoryMatchmaker`, written
again over Redis structures; ``tests/test_pool.py`` runs the same model
against both.

Every script takes ``ARGV[1]``, the key prefix, ``ARGV[2]``, the caller's
clock (seconds; the nodes of a pool must keep their clocks in step, as NTP
does), ``ARGV[3]``, a seed for the script's random choices, drawn from
the caller's random source, and ``ARGV[4]``, how long (milliseconds) the keys
it writes live unless a node renews them: two leases.  Keys (``P`` is the prefix):

``P.."nodes"``
    sorted set: node id -> the end of its lease.
``P.."nc:"..node``
    hash: the state of that node's clients, ``client.."|"..field``:
    ``id`` (identity), ``gen`` (the generation of the client's last command
    that changed its chat, see below), ``partner``, ``at`` (when the chat
    began), ``sent`` (whether the client said something in it), ``offer``
    ("1" for the one of two partners that makes the offer), ``q`` (the
    queue it joins next, when not the text one: "video"), ``ck`` (the key
    its cooldowns go by, where it is not the client id: its session's, so
    that they outlive the connection), ``wq`` (the
    queue it waits in), ``tags`` (its interests, each followed by a newline,
    where it has any) and ``ie`` (when the interest wait of a waiting client
    that is not yet open runs out).
``P.."waiting"``
    sorted set: client id -> arrival sequence number (``P.."seq"``).
``P.."open"``
    sorted set, by name: queue.."\\t"..client for each waiting client that is
    open (no interests, or its interest wait is over).
``P.."itag"``
    sorted set, by name: queue.."\\t"..interest.."\\t"..client for each
    interest of each waiting client (an interest holds no tab nor newline).
``P.."iwait"``
    sorted set: client id -> the end of its interest wait, for those not
    yet open.
``P.."cool"``
    sorted set: "a|b" of two cooldown keys (see ``ck``) -> the end of their
    re-pairing cooldown.
``P.."blocked"``
    sorted set: "a|b" of two waiting clients kept apart only by their
    cooldown -> its end, when they must be paired.
``P.."never"``
    sorted set: "identity|identity" -> sequence; never paired again.
``P.."counts"``
    hash: node id -> "online chatting", as the node last renewed its lease.
``P.."secret"``
    the key with which every node of the pool hashes client addresses, so
    that one address has one identity in the whole pool.
``P.."addr"``, ``P.."addr:"..node``
    hashes: address key -> WebSocket connections it holds, in the pool and
    on that node (so that a dead node's can be taken back).

A client id is ``node..":"..n``.  Scripts tell a node what happened to its
clients by publishing on ``P.."n:"..node``: ``W c gen`` (waiting), ``P c
gen other offer`` (paired with ``other``; ``offer`` is "1" for the one that
makes the offer), ``Q a gen b gen`` (``a`` and ``b``, both of this node,
paired with each other; ``a`` makes the offer), both followed by the
interests the two share, each after a newline, ``L c gen`` (partner left), and, after
the node has been cut off from Redis, ``S c gen partner waiting offer`` (the
client's whole state, see ``SYNC``) and then ``R`` (the node is back).  ``gen``
is the client's generation as the script saw it: a node drops a notice
older than the last command its client sent, which the client has already
overtaken.  Events from one partner to the other go node to node on the
same channels (``E c sender payload``); Redis stores none of them.  So do
a partner's connection dropping and coming back (``A c sender``, ``B c
sender``), a node's request for a session another has live (``H digest
address new-id``), and, from ``MOVE``, the handed-over client's state
(``V`` and JSON) and its new id for its partner's node (``N c old new``).
``P.."sess:"..digest`` keeps the sessions (see ``KEEP_SESSION``).
"""

from __future__ import annotations

_COMMON = r"""
local P = ARGV[1]
local NOW = tonumber(ARGV[2])
math.randomseed(tonumber(ARGV[3]))
local TTL = ARGV[4]

local function node_of(c) return string.match(c, '^(.*):[^:]*$') end
local function hkey(c) return P .. 'nc:' .. node_of(c) end
local function get(c, f) return redis.call('HGET', hkey(c), c .. '|' .. f) end
local function put(c, f, v) redis.call('HSET', hkey(c), c .. '|' .. f, v) end
local function drop(c, ...)
  local fields = {}
  for i, f in ipairs({...}) do fields[i] = c .. '|' .. f end
  redis.call('HDEL', hkey(c), unpack(fields))
end
local function tell(c, msg) redis.call('PUBLISH', P .. 'n:' .. node_of(c), msg) end
local function gen(c) return get(c, 'gen') or '0' end
local function pk(a, b) if a < b then return a .. '|' .. b end return b .. '|' .. a end
-- The key a client's cooldowns go by: its session's, or its own id.
local function ckey(c) return get(c, 'ck') or c end
local function is_waiting(c) return redis.call('ZSCORE', P .. 'waiting', c) end

-- A client's interests, in the order given.
local function interests(c)
  local out = {}
  for tag in string.gmatch(get(c, 'tags') or '', '([^\n]*)\n') do out[#out + 1] = tag end
  return out
end

-- Members of a set kept by name (see P.."open", P.."itag") that begin with prefix.
local function with_prefix(key, prefix)
  local found = {}
  local len = #prefix
  for i, m in ipairs(redis.call('ZRANGEBYLEX', key, '[' .. prefix, '(' .. prefix .. '\255')) do
    found[i] = string.sub(m, len + 1)
  end
  return found
end

-- When the interest wait of a client joining its queue now (as its node,
-- waiting iw seconds, has it) runs out.
local function wait_end(c, iw)
  if get(c, 'tags') then return NOW + tonumber(iw) end
  return NOW
end

-- Take a client out of the queue it waits in, and out of its indexes.
local function unwait(c)
  if redis.call('ZREM', P .. 'waiting', c) == 0 then return end
  local q = get(c, 'wq') or ''
  for _, tag in ipairs(interests(c)) do
    redis.call('ZREM', P .. 'itag', q .. '\t' .. tag .. '\t' .. c)
  end
  redis.call('ZREM', P .. 'open', q .. '\t' .. c)
  redis.call('ZREM', P .. 'iwait', c)
  drop(c, 'ie')
end

-- When the cooldown of a and b ends, if it has not yet.
local function cool_until(a, b)
  local s = redis.call('ZSCORE', P .. 'cool', pk(ckey(a), ckey(b)))
  if s then
    s = tonumber(s)
    if s > NOW then return s end
  end
  return nil
end

-- Pair an idle client with a random eligible waiting one of queue q (by
-- default the one it joins next): one who shares an interest with it if
-- any does, else, if the client is open (its interest wait ends at ends),
-- any open one.  Or queue it there.
local function place(c, q, ends)
  local mine = get(c, 'id')
  if not mine then return end  -- not in the pool (any more): nothing to place
  q = q or get(c, 'q') or ''
  local tags = interests(c)
  local is_open = #tags == 0 or ends <= NOW
  local eligible, blocked, seen = {}, {}, {}
  local function consider(w)
    if w == c or seen[w] then return end
    seen[w] = true
    local u = cool_until(c, w)
    if u then
      blocked[#blocked + 1] = {w, u}
    else
      local theirs = get(w, 'id')
      if mine == theirs or not redis.call('ZSCORE', P .. 'never', pk(mine, theirs)) then
        eligible[#eligible + 1] = w
      end
    end
  end
  for _, tag in ipairs(tags) do
    for _, w in ipairs(with_prefix(P .. 'itag', q .. '\t' .. tag .. '\t')) do consider(w) end
  end
  if #eligible == 0 and is_open then
    for _, w in ipairs(with_prefix(P .. 'open', q .. '\t')) do consider(w) end
  end
  if #eligible > 0 then
    local w = eligible[1]
    if #eligible > 1 then w = eligible[math.random(#eligible)] end
    unwait(w)
    local common = {}
    if #tags > 0 then
      local mine_set = {}
      for _, tag in ipairs(tags) do mine_set[tag] = true end
      for _, tag in ipairs(interests(w)) do
        if mine_set[tag] then common[#common + 1] = tag end
      end
      table.sort(common)
    end
    local shared = ''
    for _, tag in ipairs(common) do shared = shared .. '\n' .. tag end
    put(w, 'partner', c)
    put(c, 'partner', w)
    put(w, 'at', ARGV[2])
    put(c, 'at', ARGV[2])
    -- The one that waited makes the offer.
    put(w, 'offer', '1')
    put(c, 'offer', '0')
    if node_of(w) == node_of(c) then
      -- Both on one node: one notice, so that neither can speak to the
      -- other before the node knows they are paired.
      tell(c, 'Q ' .. w .. ' ' .. gen(w) .. ' ' .. c .. ' ' .. gen(c) .. shared)
    else
      tell(w, 'P ' .. w .. ' ' .. gen(w) .. ' ' .. c .. ' 1' .. shared)
      tell(c, 'P ' .. c .. ' ' .. gen(c) .. ' ' .. w .. ' 0' .. shared)
    end
    return
  end
  -- Nobody it may meet now: wake up when a cooldown with a waiting client
  -- it could meet ends, or its interest wait does.
  for _, b in ipairs(blocked) do
    redis.call('ZADD', P .. 'blocked', b[2], pk(c, b[1]))
  end
  put(c, 'wq', q)
  redis.call('ZADD', P .. 'waiting', redis.call('INCR', P .. 'seq'), c)
  for _, tag in ipairs(tags) do
    redis.call('ZADD', P .. 'itag', 0, q .. '\t' .. tag .. '\t' .. c)
  end
  if is_open then
    redis.call('ZADD', P .. 'open', 0, q .. '\t' .. c)
  else
    put(c, 'ie', string.format('%.17g', ends))
    redis.call('ZADD', P .. 'iwait', ends, c)
  end
end

local function end_chat(a, b)
  drop(a, 'partner', 'at', 'sent', 'offer')
  drop(b, 'partner', 'at', 'sent', 'offer')
end

-- End the client's chat (its partner is told) or take it out of the queue.
local function leave(c, cooldown)
  local p = get(c, 'partner')
  if p then
    end_chat(c, p)
    if cooldown > 0 then redis.call('ZADD', P .. 'cool', NOW + cooldown, pk(ckey(c), ckey(p))) end
    tell(p, 'L ' .. p .. ' ' .. gen(p))
  else
    unwait(c)
  end
end

-- Forget cooldowns that have run out; pair the waiting clients they freed,
-- and those whose interest wait has run out.
local function advance()
  redis.call('ZREMRANGEBYSCORE', P .. 'cool', '-inf', NOW)
  local due = redis.call('ZRANGEBYSCORE', P .. 'blocked', '-inf', NOW)
  local timed = redis.call('ZRANGEBYSCORE', P .. 'iwait', '-inf', NOW)
  if #due == 0 and #timed == 0 then return end
  redis.call('ZREMRANGEBYSCORE', P .. 'blocked', '-inf', NOW)
  local freed, order = {}, {}
  local function free(x)
    if not freed[x] then
      freed[x] = true
      order[#order + 1] = x
    end
  end
  for _, key in ipairs(due) do
    local a, b = string.match(key, '^(.*)|(.*)$')
    if is_waiting(a) and is_waiting(b) and not cool_until(a, b) then
      free(a)
      free(b)
    end
  end
  for _, x in ipairs(timed) do free(x) end
  for _, x in ipairs(order) do
    if is_waiting(x) then
      local q, ends = get(x, 'wq') or '', tonumber(get(x, 'ie') or NOW)
      unwait(x)
      place(x, q, ends)
    end
  end
end

-- Take a client out of the pool: its partner is told, no cooldown starts.
local function forget(c)
  local p = get(c, 'partner')
  if p then
    end_chat(c, p)
    tell(p, 'L ' .. p .. ' ' .. gen(p))
  end
  unwait(c)
  drop(c, 'id', 'gen', 'partner', 'at', 'sent', 'keys', 'offer', 'q', 'wq', 'tags', 'ck')
end

-- Keys live while a node renews them (see RENEW): those a call may have
-- made get the lease too.
local function keep(c)
  if c then redis.call('PEXPIRE', hkey(c), TTL) end
  for _, k in ipairs({'nodes', 'waiting', 'seq', 'cool', 'blocked', 'never', 'counts', 'secret',
                     'addr', 'open', 'itag', 'iwait'}) do
    redis.call('PEXPIRE', P .. k, TTL)
  end
end

-- Take back the connections a node held from the pool's per-address counts.
local function release_node(node)
  local held = redis.call('HGETALL', P .. 'addr:' .. node)
  for i = 1, #held, 2 do
    if redis.call('HINCRBY', P .. 'addr', held[i], -tonumber(held[i + 1])) <= 0 then
      redis.call('HDEL', P .. 'addr', held[i])
    end
  end
  redis.call('DEL', P .. 'addr:' .. node)
end

-- A node leaves the pool (on purpose, or its lease ran out): its clients go,
-- their partners are told, its connections are taken back.
local function remove_node(node)
  for _, f in ipairs(redis.call('HKEYS', P .. 'nc:' .. node)) do
    local c = string.match(f, '^(.*)|id$')
    if c then forget(c) end
  end
  redis.call('DEL', P .. 'nc:' .. node)
  release_node(node)
  redis.call('ZREM', P .. 'nodes', node)
  redis.call('HDEL', P .. 'counts', node)
end

-- When advance must run next, or false.
local function deadline()
  local top = redis.call('ZRANGE', P .. 'blocked', 0, 0, 'WITHSCORES')
  local timer = redis.call('ZRANGE', P .. 'iwait', 0, 0, 'WITHSCORES')
  if #timer > 0 and (#top == 0 or tonumber(timer[2]) < tonumber(top[2])) then top = timer end
  if #top == 0 then return false end
  return top[2]
end
"""

#: ARGV[5]: client, ARGV[6]: its identity, ARGV[7]: its hashed address
#: keys for reports and bans ("address network scope..." or ""), ARGV[8]:
#: the queue it joins ("" for text), ARGV[9]: its interests (each followed by
#: a newline; "" for none), ARGV[10]: the interest wait (seconds),
#: ARGV[11]: "1" to join the queue, "0" to start idle, ARGV[12]: the key
#: its cooldowns go by ("" for its id).
CONNECT = (
    _COMMON
    + """
advance()
local c = ARGV[5]
put(c, 'id', ARGV[6])
if ARGV[7] ~= '' then put(c, 'keys', ARGV[7]) end
if ARGV[8] ~= '' then put(c, 'q', ARGV[8]) end
if ARGV[9] ~= '' then put(c, 'tags', ARGV[9]) end
if ARGV[12] ~= '' then put(c, 'ck', ARGV[12]) end
put(c, 'gen', '0')
if ARGV[11] ~= '0' then
  tell(c, 'W ' .. c .. ' 0')
  place(c, nil, wait_end(c, ARGV[10]))
end
keep(c)
return deadline()
"""
)

#: ARGV[5]: client, ARGV[6]: its new generation, ARGV[7]: "next", "stop" or
#: "report", ARGV[8]: the cooldown (seconds), ARGV[9]: how many reported
#: pairs of identities are remembered, ARGV[10]: the interest wait
#: (seconds).  Returns the deadline and, for a report that ended a chat:
#: the partner, its identity, when the chat began (as the caller's clock
#: wrote it), whether the partner said anything ("1" or "0") and its
#: address keys ("" if unknown).
LEAVE = (
    _COMMON
    + """
advance()
local c, mode = ARGV[5], ARGV[7]
put(c, 'gen', ARGV[6])
local chat = {}
if mode == 'report' then
  local p = get(c, 'partner')
  if not p then return {deadline()} end
  local mine, theirs = get(c, 'id'), get(p, 'id')
  chat = {p, theirs, get(p, 'at'), get(p, 'sent') and '1' or '0', get(p, 'keys') or ''}
  if mine ~= theirs then
    redis.call('ZADD', P .. 'never', redis.call('INCR', P .. 'seq'), pk(mine, theirs))
    if redis.call('ZCARD', P .. 'never') > tonumber(ARGV[9]) then
      redis.call('ZPOPMIN', P .. 'never')
    end
  end
end
leave(c, tonumber(ARGV[8]))
if mode ~= 'stop' then
  tell(c, 'W ' .. c .. ' ' .. ARGV[6])
  place(c, nil, wait_end(c, ARGV[10]))
end
keep(c)
return {deadline(), unpack(chat)}
"""
)

#: ARGV[5]: client, ARGV[6]: the queue it joins from now on ("" for text).
QUEUE = (
    _COMMON
    + """
local c = ARGV[5]
if not get(c, 'id') then return false end
if ARGV[6] ~= '' then put(c, 'q', ARGV[6]) else drop(c, 'q') end
keep(c)
return false
"""
)

#: ARGV[5]: client, ARGV[6]: its interests (each followed by a newline),
#: ARGV[7]: the interest wait (seconds).  A waiting client joins its queue
#: again with them.
INTERESTS = (
    _COMMON
    + """
advance()
local c = ARGV[5]
if not get(c, 'id') then return deadline() end
local was = is_waiting(c)
unwait(c)
if ARGV[6] ~= '' then put(c, 'tags', ARGV[6]) else drop(c, 'tags') end
if was then place(c, nil, wait_end(c, ARGV[7])) end
keep(c)
return deadline()
"""
)

#: ARGV[5]: client, ARGV[6]: the cooldown (seconds).
DISCONNECT = (
    _COMMON
    + """
advance()
local c, cooldown = ARGV[5], tonumber(ARGV[6])
local p = get(c, 'partner')
-- A chat ended by a disconnection starts a cooldown too: the session may
-- connect again.
if p and cooldown > 0 then redis.call('ZADD', P .. 'cool', NOW + cooldown, pk(ckey(c), ckey(p))) end
forget(c)
keep(false)
return deadline()
"""
)

ADVANCE = (
    _COMMON
    + """
advance()
keep(false)
return deadline()
"""
)

#: ARGV[5]: client, ARGV[6]: the partner it said something to.
SAID = (
    _COMMON
    + """
local c = ARGV[5]
if get(c, 'partner') == ARGV[6] then put(c, 'sent', '1') end
return false
"""
)

#: ARGV[5]: node, ARGV[6]: lease (seconds), ARGV[7]: its clients online,
#: ARGV[8]: those chatting.  Renews the node's lease, takes the clients of
#: nodes whose lease has run out out of the pool (their partners are told),
#: and returns the pool's counts: online, waiting, chatting, nodes; and the
#: deadline.
RENEW = (
    _COMMON
    + """
local node, lease = ARGV[5], tonumber(ARGV[6])
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', P .. 'nodes', '-inf', '(' .. ARGV[2])) do
  if dead ~= node then remove_node(dead) end
end
advance()
redis.call('ZADD', P .. 'nodes', NOW + lease, node)
redis.call('HSET', P .. 'counts', node, ARGV[7] .. ' ' .. ARGV[8])
local online, chatting = 0, 0
for _, v in ipairs(redis.call('HVALS', P .. 'counts')) do
  local o, ch = string.match(v, '^(%d+) (%d+)$')
  online = online + tonumber(o)
  chatting = chatting + tonumber(ch)
end
-- Without a live node to renew them, the pool's keys go within two leases
-- of the last renewal (a live node reaps a dead one's clients after one).
redis.call('PEXPIRE', P .. 'nc:' .. node, TTL)
redis.call('PEXPIRE', P .. 'addr:' .. node, TTL)
keep(false)
return {tostring(online), tostring(redis.call('ZCARD', P .. 'waiting')), tostring(chatting),
        tostring(redis.call('ZCARD', P .. 'nodes')), deadline()}
"""
)

#: ARGV[5]: node, ARGV[6]: the interest wait (seconds); then, for each of its
#: clients, ten values: the client, its identity, its generation, what the
#: node last told it ("w" waiting, "p" paired, "i" idle), its partner then
#: ("" for none), its address keys, the queue it joins next ("" for text),
#: whether it was told to make the offer ("1" or "0"), its interests
#: (each followed by a newline) and the key its cooldowns go by ("": its id).
#:
#: After the node was cut off from Redis, what it missed is told again: the
#: clients Redis lost (it restarted empty, or the node's lease ran out and
#: another node reaped them) are put back, and those whose interests
#: changed meanwhile get them; a chat between two of this
#: node's clients is kept, one with a client of another node is over (that
#: node ends it on its side the same way); a client that was waiting waits
#: again.  Clients Redis holds for this node that the node no longer has
#: are taken out.  Then each client's whole state is published, after any
#: notice this script caused, so that the node sets right what it missed.
SYNC = (
    _COMMON
    + """
local node = ARGV[5]
local order, mine = {}, {}
local i = 7
while ARGV[i] do
  local c = ARGV[i]
  order[#order + 1] = c
  mine[c] = {id = ARGV[i + 1], gen = ARGV[i + 2], status = ARGV[i + 3], partner = ARGV[i + 4],
             keys = ARGV[i + 5], q = ARGV[i + 6], offer = ARGV[i + 7], tags = ARGV[i + 8],
             ck = ARGV[i + 9]}
  i = i + 10
end
for _, f in ipairs(redis.call('HKEYS', P .. 'nc:' .. node)) do
  local c = string.match(f, '^(.*)|id$')
  if c and not mine[c] then forget(c) end
end
for _, c in ipairs(order) do
  local v = mine[c]
  if not get(c, 'id') then
    put(c, 'id', v.id)
    put(c, 'gen', v.gen)
    if v.keys ~= '' then put(c, 'keys', v.keys) end
    if v.q ~= '' then put(c, 'q', v.q) end
    if v.tags ~= '' then put(c, 'tags', v.tags) end
    if v.ck ~= '' then put(c, 'ck', v.ck) end
    local p = v.partner
    if v.status == 'p' and mine[p] and mine[p].partner == c then
      put(c, 'partner', p)
      put(c, 'at', ARGV[2])
      put(c, 'offer', v.offer)
    end
  elseif (get(c, 'tags') or '') ~= v.tags then
    -- Its interests changed while the node was cut off: a waiting client
    -- leaves the queue (its index entries are those of the old ones) and
    -- is placed again below.
    unwait(c)
    if v.tags ~= '' then put(c, 'tags', v.tags) else drop(c, 'tags') end
  end
end
advance()
for _, c in ipairs(order) do
  if mine[c].status == 'w' and not is_waiting(c) and not get(c, 'partner') then
    place(c, nil, wait_end(c, ARGV[6]))
  end
end
for _, c in ipairs(order) do
  tell(c, 'S ' .. c .. ' ' .. gen(c) .. ' ' .. (get(c, 'partner') or '-') .. ' '
    .. (is_waiting(c) and '1' or '0') .. ' ' .. (get(c, 'offer') or '0'))
end
-- After all of them: the node is back in the pool.
redis.call('PUBLISH', P .. 'n:' .. node, 'R')
keep(order[1] or false)
return deadline()
"""
)

#: Reports and bans, shared by the pool: ``abuse.Reports``' rules over
#: Redis.  ARGV[5]: the reporter's address, ARGV[6]: its network, ARGV[7]:
#: the reported side's keys ("address network scope..."), ARGV[8]: how long
#: the chat lasted, ARGV[9]: whether the reported side said anything ("1"),
#: then the rules: ARGV[10] threshold, ARGV[11] window, ARGV[12] ban
#: seconds, ARGV[13] memory, ARGV[14] shortest chat, ARGV[15] bans a
#: reporter network may help bring about an hour.  A ban is kept in
#: ``P.."bans"`` (scope -> its end) and published on ``P.."bans"`` as
#: ``scope until`` for every node; it is also returned.
REPORT = (
    _COMMON
    + """
local reporter, network = ARGV[5], ARGV[6]
local keys = {}
for k in string.gmatch(ARGV[7], '%S+') do keys[#keys + 1] = k end
local reported = keys[1]
local scopes = {}
for i = 3, #keys do scopes[#scopes + 1] = keys[i] end
if #scopes == 0 then scopes = {reported} end
local threshold, window, ban_seconds = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local memory, min_chat, budget = tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
local HOUR = 3600
if not reported or reporter == reported then return false end
for _, scope in ipairs(scopes) do
  local ends = redis.call('HGET', P .. 'bans', scope)
  if ends and tonumber(ends) > NOW then return false end
end
if tonumber(ARGV[8]) < min_chat and ARGV[9] ~= '1' then return false end
local function has_budget(who)
  local k = P .. 'spent:' .. who
  redis.call('ZREMRANGEBYSCORE', k, '-inf', NOW - HOUR)
  return redis.call('ZCARD', k) < budget
end
if not has_budget(network) then return false end
local rk = P .. 'reports:' .. reported
redis.call('HSET', rk, network, ARGV[2])
local counted = {}
for _, who in ipairs(redis.call('HKEYS', rk)) do
  if tonumber(redis.call('HGET', rk, who)) <= NOW - window then
    redis.call('HDEL', rk, who)
  elseif has_budget(who) then
    counted[#counted + 1] = who
  end
end
redis.call('PEXPIRE', rk, math.ceil(window * 1000))
if #counted < threshold then return false end
redis.call('DEL', rk)
for _, who in ipairs(counted) do
  local k = P .. 'spent:' .. who
  redis.call('ZADD', k, NOW, ARGV[2] .. ':' .. redis.call('INCR', P .. 'seq'))
  redis.call('PEXPIRE', k, HOUR * 1000)
end
local widest = scopes[#scopes]
local hk = P .. 'history:' .. widest
local count, last_end = 0, nil
local h = redis.call('GET', hk)
if h then
  count, last_end = string.match(h, '^(%d+) (%S+)$')
  count, last_end = tonumber(count), tonumber(last_end)
  if NOW - last_end > memory then count = 0 end
end
local scope = scopes[math.min(count + 1, #scopes)]
local ends = NOW + ban_seconds * (2 ^ count)
local text = string.format('%.17g', ends)
redis.call('HSET', P .. 'bans', scope, text)
-- The table of bans goes when its last ban ends.
local left = math.ceil((ends - NOW) * 1000)
if redis.call('PTTL', P .. 'bans') < left then redis.call('PEXPIRE', P .. 'bans', left) end
redis.call('SET', hk, (count + 1) .. ' ' .. text, 'PX', math.ceil((ends - NOW + memory) * 1000))
redis.call('PUBLISH', P .. 'bans', scope .. ' ' .. text)
return {scope, text}
"""
)

#: ARGV[5]: node, ARGV[6]: an address key, ARGV[7]: the most connections
#: it may hold in the pool.  Takes one for it; returns 1, or 0 (and takes
#: none) when it holds that many already.
ADMIT = (
    _COMMON
    + """
local key = ARGV[6]
if redis.call('HINCRBY', P .. 'addr', key, 1) > tonumber(ARGV[7]) then
  if redis.call('HINCRBY', P .. 'addr', key, -1) <= 0 then redis.call('HDEL', P .. 'addr', key) end
  return 0
end
redis.call('HINCRBY', P .. 'addr:' .. ARGV[5], key, 1)
redis.call('PEXPIRE', P .. 'addr:' .. ARGV[5], TTL)
keep(false)
return 1
"""
)

#: ARGV[5]: node, ARGV[6]: an address key.  Gives back one connection.
RELEASE = (
    _COMMON
    + """
local key = ARGV[6]
if tonumber(redis.call('HGET', P .. 'addr:' .. ARGV[5], key) or '0') <= 0 then return 0 end
if redis.call('HINCRBY', P .. 'addr:' .. ARGV[5], key, -1) <= 0 then
  redis.call('HDEL', P .. 'addr:' .. ARGV[5], key)
end
if redis.call('HINCRBY', P .. 'addr', key, -1) <= 0 then redis.call('HDEL', P .. 'addr', key) end
return 1
"""
)

#: ARGV[5]: node, then address keys and the connections the node holds for
#: each.  After the node was cut off: its share of the per-address counts is
#: set to what it holds now.
RECOUNT = (
    _COMMON
    + """
local node = ARGV[5]
release_node(node)
local i = 6
while ARGV[i] do
  redis.call('HINCRBY', P .. 'addr', ARGV[i], tonumber(ARGV[i + 1]))
  redis.call('HSET', P .. 'addr:' .. node, ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('PEXPIRE', P .. 'addr:' .. node, TTL)
keep(false)
return 1
"""
)

#: The bans in force: their scopes and ends, flat.  Ended ones are dropped.
BANS = (
    _COMMON
    + """
local flat = redis.call('HGETALL', P .. 'bans')
local out = {}
for i = 1, #flat, 2 do
  if tonumber(flat[i + 1]) > NOW then
    out[#out + 1] = flat[i]
    out[#out + 1] = flat[i + 1]
  else
    redis.call('HDEL', P .. 'bans', flat[i])
  end
end
return out
"""
)

#: ARGV[5]: a secret this node proposes.  Returns the pool's secret: the
#: first node's.
SECRET = (
    _COMMON
    + """
redis.call('SET', P .. 'secret', ARGV[5], 'NX')
keep(false)
return redis.call('GET', P .. 'secret')
"""
)

#: ARGV[5]: node.  A node leaving the pool on purpose: its clients go.
RETIRE = (
    _COMMON
    + """
remove_node(ARGV[5])
return false
"""
)

#: Sessions (``roulette.sessions``), kept in the pool so that their tokens
#: may be presented to any process: ``P.."sess:"..digest`` (the keyed hash
#: of the current token, in hex) is a hash of ``a`` (the address hash it was
#: issued to), ``s`` (the session's id, which its cooldowns go by), ``e``
#: ("1": its chat ended while it was away) and ``n`` (the node that has it
#: live, with a connection or away; "" when none has), expiring with the
#: token.  ARGV[5]: the digest, ARGV[6]: the address, ARGV[7]: the id,
#: ARGV[8]: ended, ARGV[9]: lifetime (ms), ARGV[10]: the node or "",
#: ARGV[11]: the digest of the token it replaces, if any ("").
KEEP_SESSION = (
    _COMMON
    + """
if ARGV[11] ~= '' then redis.call('DEL', P .. 'sess:' .. ARGV[11]) end
local k = P .. 'sess:' .. ARGV[5]
redis.call('HSET', k, 'a', ARGV[6], 's', ARGV[7], 'e', ARGV[8], 'n', ARGV[10])
redis.call('PEXPIRE', k, ARGV[9])
return false
"""
)

#: Take the session of a token presented from an address (ARGV[5]: the
#: digest, ARGV[6]: the address): returns its id and whether its chat ended
#: while it was away, and forgets it (a token is used once); {node}, and
#: nothing changes, while that node has it live; false, and nothing
#: changes, if none was issued to that address.
TAKE_SESSION = (
    _COMMON
    + """
local k = P .. 'sess:' .. ARGV[5]
local v = redis.call('HMGET', k, 'a', 's', 'e', 'n')
if not v[1] or v[1] ~= ARGV[6] then return false end
if v[4] and v[4] ~= '' then return {v[4]} end
redis.call('DEL', k)
return {v[2], v[3]}
"""
)

#: Hand a client over to another node, which takes its session up (a
#: connection presented the session's token there).  ARGV[5]: the client,
#: ARGV[6]: its new id (of the other node), ARGV[7]: what the old node
#: passes on (JSON: the session's id, the messages held for it, ...), to
#: which the client's state in the pool is added; the new node hears it all
#: (``V`` and the JSON) before the partner hears of the new id (``N p old
#: new``), so nothing the partner relays to the new id can come first.
#: Returns false, and does nothing, if the client is gone.
MOVE = (
    _COMMON
    + """
local o, n = ARGV[5], ARGV[6]
if not get(o, 'id') then return false end
local x = cjson.decode(ARGV[7])
unwait(o)
for _, f in ipairs({'id', 'gen', 'partner', 'at', 'sent', 'keys', 'offer', 'q', 'tags', 'ck'}) do
  local v = get(o, f)
  if v then put(n, f, v) end
end
drop(o, 'id', 'gen', 'partner', 'at', 'sent', 'keys', 'offer', 'q', 'wq', 'tags', 'ck', 'ie')
local p = get(n, 'partner')
x.client = n
x.old = o
x.partner = p or ''
x.offer = get(n, 'offer') or '0'
x.gen = gen(n)
x.q = get(n, 'q') or ''
x.tags = get(n, 'tags') or ''
x.ck = get(n, 'ck') or ''
x.id = get(n, 'id')
x.keys = get(n, 'keys') or ''
tell(n, 'V ' .. cjson.encode(x))
if p then
  put(p, 'partner', n)
  tell(p, 'N ' .. p .. ' ' .. o .. ' ' .. n)
end
keep(n)
return true
"""
)
