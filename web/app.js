// roulette: the page's side of wire protocol v1.
//
// The server queues every new connection at once and answers each "next" with
// exactly one "waiting" before anything else about the new chat.  The page
// counts the "waiting" events it is still owed: until they have arrived, any
// "paired", "message", "typing" or "partner_left" describes a chat that the
// person has already left, and is ignored.  After the page sends "stop" the
// server sends nothing about chats until the next "next", so everything
// arriving in between is stale too.  That keeps what the page shows equal to
// what the server believes, however fast buttons are pressed.
"use strict";

(function () {
  var STATUS = {
    looking: "Looking for a stranger…",
    chatting: "You're now chatting with a random stranger. Say hi!",
    partnerLeft: "Stranger has disconnected.",
    youLeft: "You have disconnected.",
    lost: "Connection lost. Reconnecting…",
  };
  var TYPING_REPEAT_MS = 2000; // send typing:true at most this often
  var TYPING_PAUSE_MS = 3000; // a pause this long sends typing:false
  var TYPING_EXPIRE_MS = 5000; // the partner's indicator clears itself after this
  var ESC_WINDOW_MS = 1000; // two Esc presses within this do what Next does
  var RETRY_BASE_S = 1;
  var RETRY_CAP_S = 30;
  var RETRY_FLOOR_S = 0.25;
  // The server refuses commands sent too fast (by default: messages 5 a
  // second, 10 at once; next and stop 1 a second, 5 at once).  The page keeps
  // a little under those budgets, so what it shows was not refused.
  var messageBudget = bucket(4, 8);
  var queueBudget = bucket(0.8, 4);
  // A refused next or stop would leave the page unsure of its state.
  var RESYNC_WINDOW_MS = 3000;

  var statusEl = document.getElementById("status");
  var logEl = document.getElementById("log");
  var onlineEl = document.getElementById("online");
  var typingEl = document.getElementById("typing");
  var counterEl = document.getElementById("counter");
  var noticeEl = document.getElementById("notice");
  var form = document.getElementById("composer");
  var box = document.getElementById("message");
  var nextBtn = document.getElementById("next");
  var stopBtn = document.getElementById("stop");
  var saveBtn = document.getElementById("save");

  var maxLength = parseInt(box.getAttribute("data-max-length"), 10) || 2000;
  var baseTitle = document.title;

  // What the server believes about this person, as far as the page knows:
  // "looking", "chatting", "partnerLeft" or "youLeft" (the last two are idle).
  var phase = "looking";
  var ws = null;
  var connected = false;
  var lost = false; // a connection was lost, or the first one failed
  var pendingWaits = 0; // "waiting" events the server still owes this page
  var stopped = false; // "stop" was sent after the last "next"
  var attempt = 0;
  var retryTimer = 0;

  var typingSent = false;
  var typingSentAt = 0;
  var typingPauseTimer = 0;
  var typingExpireTimer = 0;
  var escTimer = 0;
  var unread = 0;
  var lastQueueCommandAt = -Infinity;

  // -- the connection ------------------------------------------------------

  function socketUrl() {
    var url = new URL("ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.search = "";
    url.hash = "";
    return url.href;
  }

  function connect() {
    retryTimer = 0;
    var sock;
    try {
      sock = new WebSocket(socketUrl());
    } catch (err) {
      scheduleReconnect();
      return;
    }
    ws = sock;
    var heard = false;
    sock.addEventListener("open", function () {
      if (ws !== sock) return;
      connected = true;
      lost = false;
      pendingWaits = 1; // the server queues every new connection
      resetTypingSignal();
      hideTyping();
      if (isIdle()) {
        // The person was idle before the connection dropped: stay idle.
        transmit({ type: "stop" });
        stopped = true;
      } else {
        stopped = false;
        phase = "looking";
      }
      render();
    });
    sock.addEventListener("message", function (ev) {
      if (ws !== sock) return;
      if (!heard) {
        heard = true;
        attempt = 0; // the server answers: the next drop starts over at 1 s
      }
      var event;
      try {
        event = JSON.parse(ev.data);
      } catch (err) {
        return;
      }
      if (event && typeof event === "object" && typeof event.type === "string") {
        handle(event);
      }
    });
    sock.addEventListener("close", function () {
      if (ws !== sock) return;
      ws = null;
      connected = false;
      lost = true;
      onlineEl.textContent = "";
      disarmEsc();
      resetTypingSignal();
      hideTyping();
      render();
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    if (retryTimer) return;
    // Exponential backoff with full jitter, never quicker than the floor.
    var cap = Math.min(RETRY_CAP_S, RETRY_BASE_S * Math.pow(2, attempt));
    attempt += 1;
    var delay = Math.max(RETRY_FLOOR_S, Math.random() * cap);
    retryTimer = setTimeout(connect, delay * 1000);
  }

  function resync() {
    var sock = ws;
    if (!sock) return;
    ws = null;
    connected = false;
    sock.close(1000, "resync");
    attempt = 0;
    clearTimeout(retryTimer);
    retryTimer = 0;
    connect();
    render();
  }

  function transmit(command) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(command));
      return true;
    }
    return false;
  }

  // -- server events ---------------------------------------------------------

  function handle(event) {
    switch (event.type) {
      case "online":
        if (typeof event.count === "number" && isFinite(event.count) && event.count >= 0) {
          onlineEl.textContent = Math.floor(event.count).toLocaleString() + " online";
        }
        return;
      case "error":
        showNotice(
          typeof event.message === "string" && event.message
            ? event.message
            : "The server refused that."
        );
        if (event.code === "rate_limited" && Date.now() - lastQueueCommandAt < RESYNC_WINDOW_MS) {
          // Perhaps the last next or stop was refused: the server's idea of
          // the chat may differ from the page's.  A fresh connection puts
          // both back in step (looking, or idle as the person chose).
          resync();
        }
        return;
      case "waiting":
        if (pendingWaits > 0) pendingWaits -= 1;
        if (pendingWaits === 0 && !stopped) {
          setPhase("looking");
        }
        return;
      default:
        break;
    }
    if (pendingWaits > 0 || stopped) return; // about a chat already left
    switch (event.type) {
      case "paired":
        clearLog();
        clearNotice();
        setPhase("chatting");
        break;
      case "message":
        if (phase === "chatting" && typeof event.text === "string") {
          hideTyping();
          addLine("stranger", event.text);
          countUnread();
        }
        break;
      case "typing":
        if (phase === "chatting") {
          if (event.active === true) showTyping();
          else hideTyping();
        }
        break;
      case "partner_left":
        if (phase === "chatting") setPhase("partnerLeft");
        break;
      default:
        break; // unknown events are ignored
    }
  }

  // -- what the person does ------------------------------------------------

  function next() {
    if (!connected) return;
    disarmEsc();
    if (!queueBudget()) {
      showNotice("Slow down a little, then try again.");
      return;
    }
    if (phase === "chatting") stopTypingSignal();
    if (!transmit({ type: "next" })) return;
    lastQueueCommandAt = Date.now();
    pendingWaits += 1;
    stopped = false;
    setPhase("looking");
  }

  function stop() {
    if (!connected || isIdle()) return;
    disarmEsc();
    if (!queueBudget()) {
      showNotice("Slow down a little, then try again.");
      return;
    }
    if (phase === "chatting") stopTypingSignal();
    if (!transmit({ type: "stop" })) return;
    lastQueueCommandAt = Date.now();
    stopped = true;
    setPhase("youLeft");
  }

  function sendMessage() {
    var text = box.value;
    if (isBlank(text)) {
      showNotice("Type a message first.");
      return;
    }
    var length = codePoints(text);
    if (length > maxLength) {
      showNotice(
        "Your message is " + length.toLocaleString() + " characters long; the limit is " +
          maxLength.toLocaleString() + "."
      );
      return;
    }
    if (typeof text.isWellFormed === "function" && !text.isWellFormed()) {
      showNotice("Your message contains characters that cannot be sent.");
      return;
    }
    if (!connected) {
      showNotice("You are offline. Your message can be sent once the connection is back.");
      return;
    }
    if (phase === "looking") {
      showNotice("Wait for a stranger to connect, then say hi.");
      return;
    }
    if (phase !== "chatting") {
      showNotice("Press Start to find a stranger first.");
      return;
    }
    if (!messageBudget()) {
      showNotice("You are sending messages too fast. Wait a moment.");
      return;
    }
    stopTypingSignal();
    if (!transmit({ type: "message", text: text })) return;
    addLine("you", text);
    box.value = "";
    clearNotice();
    updateCounter();
  }

  function onInput() {
    updateCounter();
    if (noticeEl.textContent) clearNotice();
    if (!connected || phase !== "chatting") return;
    if (!box.value) {
      stopTypingSignal(); // the box was cleared
      return;
    }
    var now = Date.now();
    if (!typingSent || now - typingSentAt >= TYPING_REPEAT_MS) {
      if (transmit({ type: "typing", active: true })) {
        typingSent = true;
        typingSentAt = now;
      }
    }
    clearTimeout(typingPauseTimer);
    typingPauseTimer = setTimeout(stopTypingSignal, TYPING_PAUSE_MS);
  }

  function stopTypingSignal() {
    clearTimeout(typingPauseTimer);
    typingPauseTimer = 0;
    if (typingSent) {
      typingSent = false;
      if (phase === "chatting") transmit({ type: "typing", active: false });
    }
  }

  function resetTypingSignal() {
    clearTimeout(typingPauseTimer);
    typingPauseTimer = 0;
    typingSent = false;
  }

  function onKeyDown(ev) {
    if (ev.key !== "Escape" || ev.repeat || ev.isComposing) return;
    if (!connected) return;
    ev.preventDefault();
    if (escTimer) {
      next();
      return;
    }
    escTimer = setTimeout(disarmEsc, ESC_WINDOW_MS);
    render();
  }

  function disarmEsc() {
    if (!escTimer) return;
    clearTimeout(escTimer);
    escTimer = 0;
    render();
  }

  function saveLog() {
    var lines = Array.prototype.map.call(logEl.children, function (line) {
      return line.textContent;
    });
    if (!lines.length) {
      showNotice("There is nothing to save yet.");
      return;
    }
    var now = new Date();
    var text =
      "roulette chat, saved " + now.toLocaleString() + "\n\n" + lines.join("\n") + "\n";
    var url = URL.createObjectURL(new Blob([text], { type: "text/plain;charset=utf-8" }));
    var link = document.createElement("a");
    link.href = url;
    link.download = "roulette-chat-" + fileStamp(now) + ".txt";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(function () {
      URL.revokeObjectURL(url);
    }, 60000);
  }

  // -- the view --------------------------------------------------------------

  function isIdle() {
    return phase === "partnerLeft" || phase === "youLeft";
  }

  function setPhase(value) {
    if (value !== "chatting") {
      hideTyping();
      resetTypingSignal();
    }
    phase = value;
    render();
  }

  function render() {
    statusEl.textContent = connected || !lost ? STATUS[phase] : STATUS.lost;
    var label = escTimer ? "Really?" : isIdle() ? "Start" : "Next";
    if (nextBtn.textContent !== label) nextBtn.textContent = label;
    nextBtn.classList.toggle("really", Boolean(escTimer));
    nextBtn.disabled = !connected;
    stopBtn.disabled = !connected || isIdle();
    document.body.setAttribute("data-state", connected ? phase : "offline");
  }

  function addLine(who, text) {
    var nearBottom = logEl.scrollHeight - logEl.scrollTop - logEl.clientHeight < 48;
    var line = document.createElement("p");
    line.className = "line " + who;
    var name = document.createElement("span");
    name.className = "who";
    name.textContent = who === "you" ? "You:" : "Stranger:";
    var body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    line.appendChild(name);
    line.appendChild(document.createTextNode(" "));
    line.appendChild(body);
    logEl.appendChild(line);
    if (nearBottom || who === "you") logEl.scrollTop = logEl.scrollHeight;
    saveBtn.disabled = false;
  }

  function clearLog() {
    logEl.textContent = "";
    saveBtn.disabled = true;
  }

  function showTyping() {
    typingEl.hidden = false;
    clearTimeout(typingExpireTimer);
    typingExpireTimer = setTimeout(hideTyping, TYPING_EXPIRE_MS);
  }

  function hideTyping() {
    clearTimeout(typingExpireTimer);
    typingExpireTimer = 0;
    typingEl.hidden = true;
  }

  function showNotice(text) {
    noticeEl.textContent = text;
  }

  function clearNotice() {
    noticeEl.textContent = "";
  }

  function updateCounter() {
    var length = codePoints(box.value);
    var show = length > maxLength * 0.9;
    counterEl.hidden = !show;
    counterEl.classList.toggle("over", length > maxLength);
    if (show) {
      counterEl.textContent = length.toLocaleString() + " / " + maxLength.toLocaleString();
    }
  }

  function countUnread() {
    if (document.visibilityState !== "hidden") return;
    unread += 1;
    document.title = "(" + unread + ") " + baseTitle;
  }

  function onVisibilityChange() {
    if (document.visibilityState === "hidden") return;
    unread = 0;
    document.title = baseTitle;
  }

  // -- helpers ---------------------------------------------------------------

  // A token bucket: refill tokens a second, at most burst of them saved up.
  function bucket(refill, burst) {
    var tokens = burst;
    var last = Date.now();
    return function take() {
      var now = Date.now();
      tokens = Math.min(burst, tokens + ((now - last) / 1000) * refill);
      last = now;
      if (tokens < 1) return false;
      tokens -= 1;
      return true;
    };
  }

  function isBlank(text) {
    // The server refuses empty text and text that is only whitespace.
    return /^[\s\x1c-\x1f\x85]*$/.test(text);
  }

  function codePoints(text) {
    var n = 0;
    for (var i = 0; i < text.length; i++) {
      var c = text.charCodeAt(i);
      if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
        var d = text.charCodeAt(i + 1);
        if (d >= 0xdc00 && d <= 0xdfff) i += 1;
      }
      n += 1;
    }
    return n;
  }

  function fileStamp(date) {
    function two(n) {
      return (n < 10 ? "0" : "") + n;
    }
    return (
      date.getFullYear() + "-" + two(date.getMonth() + 1) + "-" + two(date.getDate()) + "-" +
      two(date.getHours()) + two(date.getMinutes()) + two(date.getSeconds())
    );
  }

  // -- wiring ------------------------------------------------------------------

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    sendMessage();
  });
  box.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
      ev.preventDefault();
      sendMessage();
    }
  });
  box.addEventListener("input", onInput);
  nextBtn.addEventListener("click", next);
  stopBtn.addEventListener("click", stop);
  saveBtn.addEventListener("click", saveLog);
  document.addEventListener("keydown", onKeyDown);
  document.addEventListener("visibilitychange", onVisibilityChange);
  window.addEventListener("online", function () {
    // The network is back: do not wait out the backoff.
    if (retryTimer) {
      clearTimeout(retryTimer);
      connect();
    }
  });

  render();
  connect();
})();
