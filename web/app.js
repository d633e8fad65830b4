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
//
// "report" and "block" end the chat like "next" and are owed one "waiting"
// too, unless the partner had already left: then the server refuses them
// (not_paired), owes nothing, and the page sends the "next" the person meant.
//
// The answers to the person's own messages ("sent", or an "error" carrying
// an "id") are not about a chat but about a line in the log: they are
// matched by id, never dropped as stale.
//
// Video (camera to camera) goes from browser to browser over WebRTC; the
// server only pairs video people with video people and relays the
// signalling ("signal": offers, answers, ICE candidates) within a chat.  The
// page opens the camera only when the person presses Video (or when the
// browser already remembers the permission and the person chose video last
// time), makes one RTCPeerConnection per chat, and closes it the moment the
// chat ends, whoever ends it.  Errors that answer a "signal" carry no id:
// not_paired, not_video and too_long without an id can only be theirs (a
// message always goes with an id, a report is counted apart), and they are
// not the person's business: the chat they belonged to is over.
//
// Interests (a few topics, kept in localStorage) go in the connection's
// address, so that they count from the first match, and in an "interests"
// command whenever the person changes them (quick changes make one command,
// within the command budget).  The server answers each with the list as it
// understood it, or refuses it (bad_message, no id); the answer to the last
// list sent is the list the chips show.  The last list it accepted is the one
// a match went by: a "paired" whose "common" is empty after a wait with
// interests was a fallback to a random stranger, and the log says so.
//
// A refused handshake (HTTP 429, 403 or 503) looks to a page like any
// connection that failed.  When one fails before it ever opened, the page
// asks GET /admission why, says so, and tries again no faster than the
// server asks.  If that request fails too (the server is down, or the
// network) or the server would admit it, the page goes on retrying as after
// any drop.
//
// A first visit says what this is before anything else: a card with the
// site's rules (GET /welcome: the operator's rules file) and the age notice,
// and nothing connects until the person agrees (remembered in localStorage),
// so that reading the rules neither matches nor counts them.  Later visits
// connect at once, as visiting the page always did; so does every visit when
// the server shows no card (--no-welcome) or does not answer.
//
// A long wait on a small site would look like a fault: the server says why
// ("wait": alone in this mode, or everyone online has just talked with this
// person, the re-pair cooldown, perhaps with when it ends), and a line
// under the status line says so while the person looks.  A "wait" is about the queue the
// page is in: like "paired", it is stale while a "waiting" is owed or after
// "stop", and so is one from the queue the page has just left by turning
// video on or off (until that move's own "waiting").  Every new "waiting"
// starts without a reason; the server says it again if it still holds.
//
// Sessions: a visitor's place outlives its connection.  Right after a
// connection's first "online" the server sends "session": a token, used
// once, that the page keeps (in sessionStorage: one per tab) and presents
// when it connects again ("session=" in the address), and whether this
// connection picked up where a dropped one left off ("resumed").  The
// page decides on that event, not on "open", what the connection is: a
// new one is queued (one "waiting" owed, or "partner_left" with
// "while_away" if its chat ended while it was away); a resumed one goes on
// as the server had it (a chat: "partner_back" then the messages held for
// it; a wait: "waiting"; a chat that ended meanwhile: the messages, then
// "partner_left" with "while_away").  So a drop (the page's own, or the
// system saying the network is gone, when the page closes with 4000 "back
// soon" itself) does not end the chat on the page: it keeps the log and
// the stranger, and reconnects at once when the network is back.  The
// partner's drop ("partner_away") is said in the log, as its return
// ("partner_back").  A connection closed with 4001 had its session picked
// up by another tab (a duplicate, with a copy of the token): this page
// stops there, and starts over only when asked, without the token.
"use strict";

(function () {
  var STATUS = {
    looking: "Looking for a stranger…",
    chatting: "You're now chatting with a random stranger. Say hi!",
    partnerLeft: "Stranger has disconnected.",
    youLeft: "You have disconnected.",
    lost: "Connection lost. Reconnecting…",
    reported: "You reported the stranger. Looking for a stranger…",
    replaced: "This chat continued in another tab.",
  };
  var BLOCKED = "You blocked the stranger.";
  var FOUND_TITLE = "Stranger found!";
  var OFFLINE = "You're offline. When the connection is back you'll meet a new stranger.";
  var OFFLINE_IDLE = "You're offline. When the connection is back, press Start to meet a stranger.";
  // Lost in a chat the server keeps for a while ("resume_grace").
  var OFFLINE_CHAT = "You're offline. If you're back within {n} s, your chat goes on.";
  // Sessions (see the top): what the log says.
  var RESUMED = "Reconnected. Your chat goes on.";
  var ENDED_AWAY = "The chat ended while you were away.";
  var PARTNER_AWAY = "Stranger's connection dropped. Waiting for them to come back…";
  var PARTNER_BACK = "Stranger is back.";
  var START_OVER = "Start a new chat";
  var TRY_AGAIN = "Try again now";
  var SESSION_KEY = "roulette.session"; // this tab's session token (sessionStorage)
  var TOKEN_FORM = /^[A-Za-z0-9_-]{32}$/;
  var CLOSE_AWAY = 4000; // "back soon": the page's network is gone for a moment
  var CLOSE_RESUMED_ELSEWHERE = 4001; // another connection (tab) took the session
  // A resumed connection says what the server had this page do ("waiting",
  // "partner_back"...) at once; saying nothing within this, it had the
  // person idle.
  var RESUME_SETTLE_MS = 2000;
  var VIDEO_STATUS = {
    looking: "Looking for a stranger with a camera…",
    reported: "You reported the stranger. Looking for a stranger with a camera…",
  };
  var CAMERA_FAILED =
    "Your camera could not be opened (permission refused or no camera): you are in text mode.";
  var CAMERA_ENDED = "Your camera stopped: you are in text mode.";
  // Why the person still waits ("wait"), said under "Looking for…".
  var WAIT_STATUS = {
    alone: "You're the only one here right now.",
    cooldown: "Everyone online has just talked with you.",
    cooldownUntil: "Everyone online has just talked with you. You'll meet someone in {n} s.",
  };
  // In video mode only strangers with a camera count: the others online
  // (the count at the top says them all) are no one to meet.
  var VIDEO_WAIT_STATUS = {
    alone: "You're the only one here with a camera right now.",
    cooldown: "Everyone online with a camera has just talked with you.",
    cooldownUntil:
      "Everyone online with a camera has just talked with you. You'll meet someone in {n} s.",
  };
  // An end further off than this says more about the two clocks than about
  // the cooldown (60 s by default): then the line names no time.
  var WAIT_UNTIL_MAX_MS = 3600 * 1000;
  var VIDEO_FAILED = "Couldn't connect video with this stranger. Text still works.";
  var VIDEO_CONNECT_MS = 15000; // a video chat whose video is not up by then has failed
  var VIDEO_KEY = "roulette.video"; // "1" when the person chose video last time
  var CAMERA_GUARD_MS = 5000; // on load, wait this long at most for a remembered camera
  var REPORT_REASON = "reported from the page";
  var TYPING_REPEAT_MS = 2000; // send typing:true at most this often
  var TYPING_PAUSE_MS = 3000; // a pause this long sends typing:false
  var TYPING_EXPIRE_MS = 5000; // the partner's indicator clears itself after this
  var ESC_WINDOW_MS = 1000; // two Esc presses within this do what Next does
  var REPORT_WINDOW_MS = 3000; // a second press of Report (or Block) within this sends it
  var RETRY_BASE_S = 1;
  var RETRY_CAP_S = 30;
  var RETRY_FLOOR_S = 0.25;
  // The server refuses commands sent too fast, and messages too long.  Its
  // first "online" event says how fast and how long ("limits"); until then,
  // or from a server that does not say, these are protocol v1's defaults.
  // The page keeps a little under the budgets, so what it sends is not
  // refused; a message the server refuses anyway is marked as not delivered.
  var DEFAULT_LIMITS = {
    message_length: 2000,
    message_rate: 5,
    message_burst: 10,
    command_rate: 1,
    command_burst: 5,
    signal_length: 16384,
    signal_rate: 20,
    signal_burst: 60,
    interests: 10,
    interest_length: 30,
    interest_wait: 10, // 0: the server does not match by interests
    resume_grace: 0, // a server that does not say keeps no chat for a dropped connection
  };
  var BUDGET_SHARE = 0.8;
  var maxLength = DEFAULT_LIMITS.message_length;
  var messageBudget = underBudget(DEFAULT_LIMITS.message_rate, DEFAULT_LIMITS.message_burst);
  var queueBudget = underBudget(DEFAULT_LIMITS.command_rate, DEFAULT_LIMITS.command_burst);
  var signalLength = DEFAULT_LIMITS.signal_length;
  var signalBudget = underBudget(DEFAULT_LIMITS.signal_rate, DEFAULT_LIMITS.signal_burst);
  var signalDelay = 1000 / (DEFAULT_LIMITS.signal_rate * BUDGET_SHARE); // ms per token
  var maxInterests = DEFAULT_LIMITS.interests;
  var interestLength = DEFAULT_LIMITS.interest_length;
  var interestWait = DEFAULT_LIMITS.interest_wait;
  var resumeGrace = DEFAULT_LIMITS.resume_grace;
  var INTERESTS_KEY = "roulette.interests"; // a JSON list of normalised tags
  var INTERESTS_DEBOUNCE_MS = 800; // changes this close together make one command
  var INTERESTS_RETRY_MS = 1000; // over the command budget: try again after this
  var FALLBACK_LINE = "No one with your interests was around, so here's a random stranger.";
  // Whitespace as the server (Python's str.isspace) sees it.
  var SPACES = /[\t-\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/g;
  var CONTROLS = /[\x00-\x1f\x7f-\x9f]/;
  // A message that would show nothing, which the server refuses: empty, or
  // only whitespace (as Python's str.isspace sees it), format characters
  // (Cf: zero-width spaces and joiners, direction marks and overrides…) and
  // the other invisible ones it names (fillers, variation selectors, the
  // blank Braille pattern).  The page never sends one.
  var BLANK =
    /^[\s\x1c-\x1f\x85\p{Cf}\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180d\u180f\u2800\u3164\uffa0\ufe00-\ufe0f\u{e0100}-\u{e01ef}]*$/u;
  // Addresses in messages: http and https only, up to a space or a bracket;
  // punctuation at the end is the sentence's, not the address's.
  var URLS = /\bhttps?:\/\/[^\s<>"'`{}|\\^\[\]]+/gi;
  var TRAILING = /[.,;:!?)\u2019\u201d]+$/;
  var LINK_WARNING =
    "Links in messages come from the stranger: open only those you trust.";
  // What a text editor may take for the end of a line.
  var LINE_BREAKS = /\r\n|[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]/;
  // Why the server refused a message, as the line in the log says it.
  var REFUSALS = {
    too_long: "too long",
    rate_limited: "sent too fast",
    not_paired: "the stranger had left",
    partner_away: "the stranger's connection had dropped",
  };
  // A refused next or stop would leave the page unsure of its state.
  var RESYNC_WINDOW_MS = 3000;
  // After a ban the page waits until it ends, then up to this much more.
  var BAN_SLACK_MS = 2000;
  var BAN_DEFAULT_MS = 10 * 60 * 1000; // when the server names no end
  var BAN_KEY = "roulette.bannedUntil";
  // Refused at the handshake (see the top): what the page says, by the code
  // GET /admission gives; "{n}" counts down to the next try.
  var REFUSED = {
    too_many_connections: "Too many connections from your network. Close a tab and try again.",
    too_many_attempts: "Too many new connections from your network. Trying again in {n} s.",
    server_full: "The server is full right now. Trying again in {n} s.",
    starting: "The server is starting. Trying again in {n} s.",
  };
  var REFUSED_RETRY_S = 30; // at least this long between tries, when refused
  var SOUND_KEY = "roulette.sound"; // "1" when the person wants a sound
  var WELCOME_KEY = "roulette.welcomed"; // "1" when the person agreed to the rules

  var statusEl = document.getElementById("status");
  var whyEl = document.getElementById("why");
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
  var reportBtn = document.getElementById("report");
  var blockBtn = document.getElementById("block");
  var sendBtn = document.getElementById("send");
  var retryBtn = document.getElementById("retry");
  var soundBtn = document.getElementById("sound");
  var chatEl = document.getElementById("chat");
  var stageEl = document.getElementById("stage");
  var remoteEl = document.getElementById("remote");
  var localEl = document.getElementById("local");
  var videoNoteEl = document.getElementById("video-note-text");
  var videoNextBtn = document.getElementById("video-next");
  var unmuteBtn = document.getElementById("unmute");
  var videoBtn = document.getElementById("video");
  var micBtn = document.getElementById("mic");
  var cameraBtn = document.getElementById("camera");
  var placeholderEl = document.getElementById("placeholder");
  var interestsEl = document.getElementById("interests");
  var chipsEl = document.getElementById("chips");
  var interestBox = document.getElementById("interest");
  var interestNoteEl = document.getElementById("interest-note");
  var welcomeEl = document.getElementById("welcome");
  var welcomeRulesEl = document.getElementById("welcome-rules");
  var welcomeRulesTitle = document.getElementById("welcome-rules-title");
  var welcomeStartBtn = document.getElementById("welcome-start");
  // What the card covers: out of reach (keyboard, pointer, screen reader)
  // while it shows.
  var behindWelcome = [document.querySelector("header.bar"), chatEl];

  var baseTitle = document.title;

  // What the server believes about this person, as far as the page knows:
  // "looking", "chatting", "partnerLeft" or "youLeft" (the last two are idle).
  var phase = "looking";
  var ws = null;
  var connected = false;
  var lost = false; // a connection was lost, or the first one failed
  var pendingWaits = 0; // "waiting" events the server still owes this page
  var stopped = false; // "stop" was sent after the last "next"
  var reported = false; // looking again because the person reported a stranger
  // A "report" or a "block" was sent and neither its "waiting" nor its
  // refusal has come.
  var reportUnanswered = false;
  var bannedUntil = loadBan(); // ms since the epoch; 0 when not banned
  var attempt = 0;
  var retryTimer = 0;
  // Why the server refuses this page's connections, as GET /admission said
  // ({code, message, at: when the page tries again}); null when it does not.
  var refusal = null;
  var countdownTimer = 0;
  // Why the server says the person still waits, while looking ({reason:
  // "alone" or "cooldown", until: ms since the epoch, or 0}); null when it
  // said nothing, or no reason holds any more.
  var waitReason = null;
  var waitTimer = 0; // counts the cooldown down on the status line
  // "video" was sent while looking: the "waiting" that answers it (or a
  // "paired" from the queue left) has not come, and a "wait" before it is
  // about the queue the person left.
  var moveOwed = false;
  var soundOn = loadSound();
  var welcoming = false; // the first visit's card shows: not connected on purpose
  var audio = null; // the AudioContext, made when first needed

  var typingSent = false;
  var typingSentAt = 0;
  var typingPauseTimer = 0;
  var typingExpireTimer = 0;
  var escTimer = 0;
  var reportTimer = 0;
  var blockTimer = 0;
  var unread = 0;
  var linksWarned = false; // the warning about links was shown on this page
  var titleNote = ""; // what happened while the tab was hidden, besides messages
  var noticeHolds = null; // see showNotice
  var boxHadFocus = false; // the message box had the focus when it was disabled
  var budgetTimer = 0;
  var lastQueueCommandAt = -Infinity;
  // Each message goes with an id; its line stays "sending" until the server
  // answers "sent" (or an error) with that id.
  var nextMessageId = 1;
  var unconfirmed = {}; // id -> the line of a message not yet answered
  var limitsKnown = false; // this connection's first "online" has come

  // Sessions (see the top).
  var sessionToken = loadToken(); // the token to present; "" for none
  var sessionKnown = false; // this connection's "session" has come (or the server has none)
  // This connection resumed the session, and the server has not yet said
  // in what state (a "waiting", "partner_back" or "partner_left").
  var resuming = false;
  // ...and the person had asked to leave the chat just before the drop (a
  // next, report or block unanswered): a chat the server still has is one
  // to leave.
  var resumeLeaving = false;
  var resumeTimer = 0;
  // A new session is queued and owes its "waiting"; one whose chat ended
  // while it was away is idle instead, and says so ("partner_left" with
  // "while_away") in its place.
  var joinOwed = false;
  // The last connection was lost in a way the server keeps the chat for
  // (a drop, or the page's own "back soon"), if its grace allows.
  var mayResume = false;
  var partnerAway = false; // the stranger's connection dropped ("partner_away")
  var replaced = false; // closed with 4001: another tab goes on with the session
  // The last "paired": a video chat's peer connection starts again the same
  // way when the two are back ("partner_back").
  var pairedVideo = false;
  var pairedOffer = false;
  var pairedIce = null;
  var hurry = false; // the network came back while the page asked why it could not connect

  // Video.  videoMode is what the person chose (Video pressed: the camera is
  // on and the page looks for strangers with a camera); socketVideo is the
  // mode the server has for this connection, as the page last told it.
  var videoMode = false;
  var socketVideo = false;
  var localStream = null;
  var cameraPending = false; // getUserMedia asked, not answered yet
  var micMuted = false;
  var cameraPaused = false;
  // "video" was sent while looking: the server may have paired the person in
  // the queue it was leaving just before, and the next "paired" tells.
  var switchPending = false;
  var modeTimer = 0; // retries telling the server the mode, budget allowing
  var peer = null; // this chat's RTCPeerConnection and what goes with it (startPeer)
  var videoTimer = 0;
  var signalQueue = []; // frames waiting for the signal budget
  var signalTimer = 0;

  // Interests.  "interests" is the person's list, normalised, as the chips
  // show it; "interestsSent" the list this connection's server was last
  // given (in the address or a command), with "interestsOwed" answers still
  // to come; "interestsHeld" the list it last accepted, which is the one a
  // match goes by.
  var interests = loadInterests();
  var interestsSent = [];
  var interestsOwed = 0;
  var interestsHeld = [];
  var interestsTimer = 0;

  // -- the connection ------------------------------------------------------

  function socketUrl(tags) {
    var url = new URL("ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    var query = new URLSearchParams();
    if (videoMode) query.append("video", "1");
    tags.forEach(function (tag) {
      query.append("interest", tag);
    });
    if (sessionToken) query.append("session", sessionToken);
    var search = query.toString();
    url.search = search ? "?" + search : "";
    url.hash = "";
    return url.href;
  }

  function connect() {
    retryTimer = 0;
    if (isBanned()) {
      waitOutBan();
      return;
    }
    var sock;
    var sockTags = interests.slice(); // the address says them
    try {
      sock = new WebSocket(socketUrl(sockTags));
    } catch (err) {
      scheduleReconnect();
      return;
    }
    ws = sock;
    interestsSent = sockTags;
    interestsOwed = sockTags.length ? 1 : 0; // answered right after the first "online"
    interestsHeld = [];
    var sockVideo = videoMode; // the address says it
    var heard = false;
    var opened = false;
    limitsKnown = false; // this server's first "online" says them
    sock.addEventListener("open", function () {
      if (ws !== sock) return;
      opened = true;
      setRefusal(null);
      // What this connection is (new, or the session resumed) is decided on
      // its "session" event (onSession), which comes before anything about
      // a chat: until then the page is not connected yet, as far as the
      // person can tell.
      sessionKnown = false;
      socketVideo = sockVideo;
      switchPending = false;
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
    sock.addEventListener("close", function (ev) {
      lose(sock, opened, ev.code);
    });
  }

  // The connection is gone ("code": its close code; CLOSE_AWAY when the page
  // closed it itself because the network went).  The chat stays on the page
  // when the server keeps it for a while: the next connection presents the
  // session's token and picks it up.
  function lose(sock, opened, code) {
    if (ws !== sock) return;
    ws = null;
    connected = false;
    lost = true;
    reportUnanswered = false;
    setWait(null);
    moveOwed = false;
    clearTimeout(resumeTimer);
    resumeTimer = 0;
    resuming = false;
    onlineEl.textContent = "";
    interestsOwed = 0; // the next connection gives them in its address
    // Kept only after a drop (no close frame) or the page's own "back
    // soon": a close of the server's own (it shuts down, say) ends the chat.
    mayResume = opened && resumeGrace > 0 && (code === 1006 || code === CLOSE_AWAY);
    closePeer();
    abandonUnconfirmed();
    disarmEsc();
    disarmReport();
    disarmBlock();
    resetTypingSignal();
    hideTyping();
    if (code === CLOSE_RESUMED_ELSEWHERE) {
      // Another tab (a duplicate of this one) presented the token and goes
      // on: this one stops, and its token is spent.
      replaced = true;
      forgetToken();
      clearNotice();
      addEvent(STATUS.replaced);
      render();
      return;
    }
    if (!isBanned()) showOffline();
    render();
    if (isBanned()) waitOutBan();
    else if (!opened) askWhy();
    else scheduleReconnect();
  }

  // The system says the network is gone: a socket may take long to notice
  // (or never, until it is used).  The page closes it itself, telling the
  // server it will be back ("back soon", CLOSE_AWAY, if the server still
  // hears it), and reconnects as soon as the network is back.
  function onOffline() {
    var sock = ws;
    if (!sock) return;
    if (sock.readyState === WebSocket.CONNECTING) {
      sock.close(); // fails: its "close" goes on as for any failed try
      return;
    }
    try {
      sock.close(CLOSE_AWAY, "offline");
    } catch (err) {
      // Closing already.
    }
    lose(sock, true, CLOSE_AWAY);
  }

  // The network is back: do not wait out the backoff (but a ban, yes).
  function onOnline() {
    if (replaced || ws || connected || isBanned()) return;
    if (retryTimer > 0) {
      clearTimeout(retryTimer);
      attempt = 0;
      connect();
    } else if (retryTimer === -1) {
      hurry = true; // when the question why is answered
    }
  }

  // The connection failed before it opened: ask the server why (see the
  // top).  Admitted, or no answer: the server is away, or the network, and
  // the page keeps trying as after any drop.
  function askWhy() {
    var asked = fetch(new URL("admission", location.href).href, { cache: "no-store" })
      .then(function (response) {
        return response.ok ? response.json() : null;
      })
      .catch(function () {
        return null;
      });
    retryTimer = -1; // a try is on its way: "online" and scheduleReconnect wait for it
    asked.then(function (answer) {
      retryTimer = 0;
      if (ws || connected) return; // "Try again now" went ahead meanwhile
      var now = hurry;
      hurry = false;
      if (!answer || typeof answer !== "object" || answer.admitted !== false) {
        setRefusal(null);
        if (now && !replaced) connect();
        else scheduleReconnect();
        return;
      }
      var code = typeof answer.code === "string" ? answer.code : "";
      var after = typeof answer.retry_after === "number" && isFinite(answer.retry_after)
        ? answer.retry_after
        : 0;
      if (code === "banned") {
        // As after a "banned" event: said, remembered, and waited out.
        setRefusal(null);
        onBanned(answer.until);
        waitOutBan();
        return;
      }
      var wait = Math.max(REFUSED_RETRY_S, after) * 1000;
      setRefusal({
        code: code,
        message: typeof answer.message === "string" ? answer.message : "",
        at: Date.now() + wait,
      });
      clearNotice(); // the status line says why, and what follows
      retryTimer = setTimeout(connect, wait);
      render();
    });
  }

  function setRefusal(value) {
    refusal = value;
    clearInterval(countdownTimer);
    countdownTimer = value ? setInterval(render, 1000) : 0;
    retryBtn.hidden = !value;
  }

  // What the status line says about a refusal, counting down to the next try.
  function refusalText() {
    var left = Math.max(1, Math.ceil((refusal.at - Date.now()) / 1000));
    var line = REFUSED[refusal.code] || refusal.message || STATUS.lost;
    return line.replace("{n}", String(left));
  }

  // A "wait" from the server (see the top), while looking.
  function onWait(event) {
    if (event.reason === "alone") {
      setWait({ reason: "alone", until: 0 });
    } else if (event.reason === "cooldown") {
      var until = typeof event.until === "number" && isFinite(event.until) ? event.until * 1000 : 0;
      if (until - Date.now() > WAIT_UNTIL_MAX_MS) until = 0;
      setWait({ reason: "cooldown", until: until });
    } else {
      // null: no reason any more.  A reason this page does not know is
      // nothing it could explain either.
      setWait(null);
    }
    render();
  }

  // The line under the status counts down, one change a second at most
  // (render writes it only when the text differs), and stops at 1 s.
  function setWait(value) {
    waitReason = value;
    clearInterval(waitTimer);
    waitTimer = value && value.until ? setInterval(render, 1000) : 0;
  }

  // What the line under the status says about a wait.
  function waitText() {
    var lines = videoMode ? VIDEO_WAIT_STATUS : WAIT_STATUS;
    var line;
    if (waitReason.reason === "alone") {
      line = lines.alone;
    } else if (waitReason.until) {
      // Paired then at the latest: never "0 s", nor less.
      var left = Math.max(1, Math.ceil((waitReason.until - Date.now()) / 1000));
      line = lines.cooldownUntil.replace("{n}", String(left));
    } else {
      line = lines.cooldown;
    }
    return line;
  }

  // "Try again now": do not wait out the rest of the pause.
  function retryNow() {
    if (connected || ws || isBanned()) return;
    if (replaced) {
      // Starting over, as a new visitor: without the token (spent; the
      // other tab has the session) and looking for a stranger.
      replaced = false;
      forgetToken();
      mayResume = false;
      stopped = false;
      pendingWaits = 0;
      setPhase("looking");
    }
    clearTimeout(retryTimer);
    retryTimer = 0;
    connect();
  }

  function scheduleReconnect() {
    if (retryTimer || replaced) return;
    setRefusal(null);
    // Exponential backoff with full jitter, never quicker than the floor.
    var cap = Math.min(RETRY_CAP_S, RETRY_BASE_S * Math.pow(2, attempt));
    attempt += 1;
    var delay = Math.max(RETRY_FLOOR_S, Math.random() * cap);
    retryTimer = setTimeout(connect, delay * 1000);
  }

  function waitOutBan() {
    clearTimeout(retryTimer);
    var left = bannedUntil - Date.now();
    if (left <= 0) {
      // The ban is over: connect as after any other drop, a little later
      // each (so that clocks that disagree by a second do not matter).
      setBan(0);
      attempt = 0;
      retryTimer = setTimeout(connect, 500 + Math.random() * BAN_SLACK_MS);
      render();
      return;
    }
    // Long timeouts overflow; check again at least once a day.
    retryTimer = setTimeout(waitOutBan, Math.min(left, 86400000));
  }

  function isBanned() {
    return bannedUntil > 0;
  }

  function banStatus() {
    return "You have been banned until " + clockTime(bannedUntil) + ".";
  }

  function setBan(until) {
    bannedUntil = until;
    try {
      if (until) localStorage.setItem(BAN_KEY, String(until));
      else localStorage.removeItem(BAN_KEY);
    } catch (err) {
      // Storage may be unavailable; the ban still holds for this page.
    }
  }

  function loadBan() {
    // A reload during a ban would only be refused (HTTP 403): remember it.
    var until = 0;
    try {
      until = parseInt(localStorage.getItem(BAN_KEY), 10) || 0;
    } catch (err) {
      until = 0;
    }
    return until > Date.now() ? until : 0;
  }

  function resync() {
    var sock = ws;
    if (!sock) return;
    ws = null;
    connected = false;
    sock.close(1000, "resync");
    abandonUnconfirmed(); // the old socket's answers are no longer heard
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
    if (!sessionKnown && event.type !== "online") {
      // The first event after the first "online": "session", from a
      // server with sessions; from one without, every connection is new.
      sessionKnown = true;
      if (event.type === "session") {
        onSession(event);
        return;
      }
      onSession(null);
    }
    switch (event.type) {
      case "online":
        if (typeof event.count === "number" && isFinite(event.count) && event.count >= 0) {
          onlineEl.textContent = Math.floor(event.count).toLocaleString() + " online";
        }
        if (!limitsKnown) {
          // Only the first one carries limits; an older server sends none,
          // and then protocol v1's defaults hold (not the last server's).
          limitsKnown = true;
          applyLimits(event.limits && typeof event.limits === "object" ? event.limits : {});
        }
        return;
      case "interests":
        // Not about a chat: the answer to the interests this page gave.
        onInterests(event.tags);
        return;
      case "sent":
        // Answers name a line by its id, whatever chat the page is in now.
        if (unconfirmed.hasOwnProperty(event.id)) {
          confirmLine(unconfirmed[event.id], null);
          delete unconfirmed[event.id];
        }
        return;
      case "error":
        if (typeof event.id === "number") {
          // About a message, not a next, stop or report: nothing to put back
          // in step.  Its line may be gone with the chat it was in.
          if (unconfirmed.hasOwnProperty(event.id)) {
            confirmLine(unconfirmed[event.id], REFUSALS[event.code] || "refused");
            delete unconfirmed[event.id];
            if (typeof event.message === "string" && event.message) showNotice(event.message);
          }
          return;
        }
        if (event.code === "bad_message" && interestsOwed > 0) {
          // The page sends nothing else the server could find malformed.
          interestsRefused(event.message);
          return;
        }
        if (
          event.code === "rate_limited" &&
          interestsOwed > 0 &&
          Date.now() - lastQueueCommandAt >= RESYNC_WINDOW_MS
        ) {
          // No next, stop, report or video of late: the interests were
          // refused, and nothing else.  Send them again in a moment.
          interestsOwed -= 1;
          interestsSent = null;
          sendInterestsSoon(INTERESTS_RETRY_MS);
          return;
        }
        if (event.code === "not_paired" && reportUnanswered) {
          // Nothing to tell: the person is looking again either way (a block
          // needs none: with the chat over, the two were not matched again).
          reportRefused();
          return;
        }
        if (event.code === "not_paired" || event.code === "not_video" || event.code === "too_long") {
          // A signal for a chat that has just ended (see the top).
          return;
        }
        showNotice(
          typeof event.message === "string" && event.message
            ? event.message
            : "The server refused that."
        );
        if (event.code === "rate_limited" && Date.now() - lastQueueCommandAt < RESYNC_WINDOW_MS) {
          // Perhaps the last next, stop or report was refused: the server's idea of
          // the chat may differ from the page's.  A fresh connection puts
          // both back in step (looking, or idle as the person chose).
          resync();
        }
        return;
      case "banned":
        onBanned(event.until);
        return;
      case "notice":
        // About the service (matching paused, or working again): said as is.
        if (typeof event.message === "string" && event.message) showNotice(event.message);
        return;
      case "session":
        return; // one per connection: the first was taken above
      case "partner_left":
        if (event.while_away === true && joinOwed) {
          // In place of the new session's "waiting": its chat ended while
          // it was away, and the server has it idle.
          joinOwed = false;
          if (pendingWaits > 0) pendingWaits -= 1;
          if (pendingWaits === 0 && !stopped) endedAway();
          return;
        }
        break;
      case "waiting":
        joinOwed = false;
        if (resuming) {
          // The server had the person looking: a chat the page still
          // showed had ended.
          settleResume();
          if (phase === "chatting" && pendingWaits === 0 && !stopped) addEvent(ENDED_AWAY);
        }
        // The first "waiting" after a report (or a block) is its own.
        reportUnanswered = false;
        // One that is not owed answers a move to the other queue (or is
        // unexpected): whatever "wait" follows is about the queue now.
        if (pendingWaits === 0) moveOwed = false;
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
        moveOwed = false; // paired before the move: no "waiting" for it
        var isVideo = event.video === true;
        if (switchPending) {
          switchPending = false;
          // Paired in the queue the person was leaving: look again, in the
          // mode they chose.
          if (isVideo !== videoMode && queueBudget()) {
            sendNext();
            return;
          }
        }
        reported = false;
        settleResume();
        closePeer();
        clearLog();
        clearNotice();
        introduce(event.common);
        partnerAway = false;
        setPhase("chatting");
        tellHidden(FOUND_TITLE);
        chime();
        pairedVideo = isVideo;
        pairedOffer = event.offer === true;
        pairedIce = event.ice_servers;
        startVideo();
        break;
      case "wait":
        if (phase === "looking" && !moveOwed) onWait(event);
        break;
      case "signal":
        if (phase === "chatting" && peer && event.data && typeof event.data === "object") {
          onSignal(peer, event.data);
        }
        break;
      case "message":
        if (phase === "chatting" && typeof event.text === "string") {
          hideTyping();
          addLine("stranger", event.text);
          countUnread();
          chime();
        }
        break;
      case "typing":
        if (phase === "chatting") {
          if (event.active === true) showTyping();
          else hideTyping();
        }
        break;
      case "partner_left":
        if (event.while_away === true) {
          // Back, the person finds the chat over (after what the stranger
          // said meanwhile); unless they had asked to leave it.
          var leaving = resuming && resumeLeaving;
          settleResume();
          if (leaving && phase === "looking") lookAgain();
          else endedAway();
        } else if (phase === "chatting") {
          setPhase("partnerLeft");
          addEvent(STATUS.partnerLeft);
          tellHidden(STATUS.partnerLeft);
        }
        break;
      case "partner_away":
        // The stranger's connection dropped: the chat goes on, what the
        // person writes is kept for the stranger, and Next still works.
        if (phase === "chatting" && !partnerAway) {
          partnerAway = true;
          hideTyping();
          closePeer();
          addInfo(PARTNER_AWAY);
          render();
        }
        break;
      case "partner_back":
        onPartnerBack();
        break;
      default:
        break; // unknown events are ignored
    }
  }

  // The connection's "session" (null from a server without sessions): from
  // now on the page is connected.  What the page showed before the drop
  // (phase, and the "waiting" events it was owed) meets what the server
  // says it has.
  function onSession(event) {
    var resumed = Boolean(event) && event.resumed === true;
    if (event && typeof event.token === "string" && TOKEN_FORM.test(event.token)) {
      saveToken(event.token);
    }
    var wasIdle = isIdle();
    var leaving = phase === "looking" && pendingWaits > 0;
    connected = true;
    lost = false;
    mayResume = false;
    setWait(null);
    moveOwed = false;
    reportUnanswered = false;
    reported = false;
    resetTypingSignal();
    hideTyping();
    clearTimeout(resumeTimer);
    resumeTimer = 0;
    joinOwed = false;
    resuming = false;
    resumeLeaving = false;
    if (!resumed) {
      // A new session, queued at once (see the top).
      pendingWaits = 1;
      joinOwed = Boolean(event);
      if (phase === "chatting") {
        // The chat the page still showed is over.
        addEvent(ENDED_AWAY);
        tellHidden(STATUS.partnerLeft);
      }
    } else {
      // Picked up where the last connection was: the server says how it
      // had the person, and owes nothing for what the page asked before.
      pendingWaits = 0;
      resuming = !wasIdle;
      resumeLeaving = leaving;
      // Idle, it would say nothing at all.
      if (resuming) resumeTimer = setTimeout(resumeSettled, RESUME_SETTLE_MS);
    }
    if (wasIdle) {
      // The person was idle before the connection dropped: stay idle.
      transmit({ type: "stop" });
      stopped = true;
    } else {
      stopped = false;
      if (!resumed) setPhase("looking");
    }
    // Video was turned on or off while this connection was on its way.
    if (videoMode !== socketVideo) tellMode();
    // Interests too.
    if (!sameTags(interests, interestsSent)) sendInterestsSoon();
    render();
  }

  // The server has said how it had the person (or could have: see onSession).
  function settleResume() {
    resuming = false;
    resumeLeaving = false;
    clearTimeout(resumeTimer);
    resumeTimer = 0;
  }

  // A resumed connection heard nothing about a chat or a wait: the server
  // has the person idle (a stranger who left as the connection dropped,
  // say).  The page was looking: look; it showed a chat: that is over.
  function resumeSettled() {
    resumeTimer = 0;
    if (!resuming || !connected) return;
    settleResume();
    if (pendingWaits > 0 || stopped) return; // the person went on meanwhile
    if (phase === "looking") lookAgain();
    else if (phase === "chatting") endedAway();
  }

  // Ask for a stranger without the person pressing anything (they were
  // looking already, as far as they know).
  function lookAgain() {
    if (queueBudget() && transmit({ type: "next" })) {
      lastQueueCommandAt = Date.now();
      pendingWaits += 1;
      stopped = false;
      setPhase("looking");
    } else {
      resync();
    }
  }

  // The chat ended while the person was away: said, and idle, as when a
  // stranger leaves.
  function endedAway() {
    var said = logEl.lastElementChild;
    if (!(said && said.classList.contains("event") && said.textContent === ENDED_AWAY)) {
      addEvent(ENDED_AWAY);
    }
    setPhase("partnerLeft");
    tellHidden(STATUS.partnerLeft);
  }

  // "partner_back": the stranger is back, or (on a connection that resumed
  // the session) the person is, to the same chat.
  function onPartnerBack() {
    if (resuming) {
      var leaving = resumeLeaving;
      settleResume();
      if (phase === "looking" && leaving) {
        // The person had asked to leave this chat: leave it.
        lookAgain();
        return;
      }
      if (phase !== "chatting") {
        // A chat this page never showed (a duplicate of the tab that had
        // it, or one that began as the connection dropped): it goes on here.
        clearLog();
        clearNotice();
        setPhase("chatting");
      }
      partnerAway = false;
      addInfo(RESUMED);
      startVideo();
      render();
      return;
    }
    if (phase === "chatting" && partnerAway) {
      partnerAway = false;
      addInfo(PARTNER_BACK);
      startVideo();
      render();
    }
  }

  // A video chat's peer connection, as the last "paired" said (again, once
  // both are back after a drop).
  function startVideo() {
    if (pairedVideo && videoMode && localStream && phase === "chatting") {
      startPeer(pairedOffer, pairedIce);
    }
  }

  function onBanned(until) {
    var ms =
      typeof until === "number" && isFinite(until) && until > 0
        ? until * 1000
        : Date.now() + BAN_DEFAULT_MS;
    setBan(ms);
    disarmEsc();
    disarmReport();
    disarmBlock();
    resetTypingSignal();
    hideTyping();
    clearNotice();
    // The server closes the connection next; close it here as well, so that
    // nothing more is sent or shown.
    var sock = ws;
    if (sock) sock.close(1000, "banned");
    render();
  }

  function reportRefused() {
    // The chat had already ended when the report (or block) arrived (the
    // partner left first): the server has this person idle and owes no
    // "waiting" for it.
    reportUnanswered = false;
    if (pendingWaits > 0) pendingWaits -= 1;
    if (pendingWaits > 0 || stopped) return; // a later next or stop decides
    // The person asked to look again: do that now.
    if (queueBudget() && transmit({ type: "next" })) {
      lastQueueCommandAt = Date.now();
      pendingWaits += 1;
    } else {
      resync();
    }
  }

  // -- what the person does ------------------------------------------------

  function next() {
    if (!connected) return;
    disarmEsc();
    disarmReport();
    disarmBlock();
    if (!spendQueueBudget()) return;
    sendNext();
  }

  // Next, its budget already spent.
  function sendNext() {
    var wasChatting = phase === "chatting";
    if (wasChatting) stopTypingSignal();
    if (!transmit({ type: "next" })) return;
    // The old conversation stays until the next one starts: say where it ended.
    if (wasChatting) addEvent(STATUS.youLeft);
    lastQueueCommandAt = Date.now();
    pendingWaits += 1;
    stopped = false;
    reported = false;
    setPhase("looking");
  }

  function report() {
    if (!connected || phase !== "chatting") return;
    disarmEsc();
    disarmBlock(); // one question at a time
    if (!reportTimer) {
      // The first press only asks.
      reportTimer = setTimeout(disarmReport, REPORT_WINDOW_MS);
      render();
      return;
    }
    disarmReport();
    if (!spendQueueBudget()) return;
    stopTypingSignal();
    if (!transmit({ type: "report", reason: REPORT_REASON })) return;
    lastQueueCommandAt = Date.now();
    pendingWaits += 1;
    reportUnanswered = true;
    stopped = false;
    reported = true;
    clearLog();
    clearNotice();
    setPhase("looking");
  }

  // Block: the chat ends as with Next, and the server never matches the two
  // again.  Asked first, as Report is; the conversation stays in the log (it
  // is the person's), with the end said after it.
  function block() {
    if (!connected || phase !== "chatting") return;
    disarmEsc();
    disarmReport(); // one question at a time
    if (!blockTimer) {
      // The first press only asks.
      blockTimer = setTimeout(disarmBlock, REPORT_WINDOW_MS);
      render();
      return;
    }
    disarmBlock();
    if (!spendQueueBudget()) return;
    stopTypingSignal();
    if (!transmit({ type: "block" })) return;
    addEvent(BLOCKED);
    lastQueueCommandAt = Date.now();
    pendingWaits += 1;
    reportUnanswered = true; // answered, or refused, as a report is
    stopped = false;
    reported = false;
    clearNotice();
    setPhase("looking");
  }

  function disarmBlock() {
    if (!blockTimer) return;
    clearTimeout(blockTimer);
    blockTimer = 0;
    render();
  }

  // Next, Stop, Report and Block share one budget, as on the server.
  function spendQueueBudget() {
    if (queueBudget()) return true;
    showBudgetNotice("Slow down a little, then try again.", queueBudget);
    return false;
  }

  function disarmReport() {
    if (!reportTimer) return;
    clearTimeout(reportTimer);
    reportTimer = 0;
    render();
  }

  function stop() {
    if (!connected || isIdle()) return;
    disarmEsc();
    disarmReport();
    disarmBlock();
    if (!spendQueueBudget()) return;
    var wasChatting = phase === "chatting";
    if (wasChatting) stopTypingSignal();
    if (!transmit({ type: "stop" })) return;
    lastQueueCommandAt = Date.now();
    stopped = true;
    reported = false;
    setPhase("youLeft");
    if (wasChatting) addEvent(STATUS.youLeft);
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
    if (isBanned()) {
      showNotice(banStatus(), isBanned);
      return;
    }
    if (!connected) {
      showOffline();
      return;
    }
    if (phase === "looking") {
      showNotice(
        "Wait for a stranger to connect, then say hi.",
        onThisConnection(function () {
          return phase === "looking";
        })
      );
      return;
    }
    if (phase !== "chatting") {
      showNotice("Press Start to find a stranger first.", onThisConnection(isIdle));
      return;
    }
    if (!messageBudget()) {
      showBudgetNotice("You are sending messages too fast. Wait a moment.", messageBudget);
      return;
    }
    stopTypingSignal();
    var id = nextMessageId++;
    if (!transmit({ type: "message", text: text, id: id })) return;
    var line = addLine("you", text);
    line.classList.add("pending");
    setLineState(line, "sending…");
    unconfirmed[id] = line;
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
    // Each line as shown, marks included: a refused message is saved as
    // "You: … (not delivered: too long)", never as if it had been said.
    var lines = Array.prototype.map.call(logEl.children, savedLine);
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

  // One line of the log as saved: "[14:03] Stranger: hi".  The lines of a
  // message after its first are indented under its text, so that a line
  // break in it cannot make the rest pass for another speaker's line.
  function savedLine(line) {
    var at = Number(line.getAttribute("data-at"));
    var stamp = "[" + (at ? clockOf(new Date(at)) : "--:--") + "] ";
    var who = line.querySelector(".who");
    if (!who) return stamp + line.textContent;
    var head = stamp + who.textContent + " ";
    var rest = line.textContent.slice(line.textContent.indexOf(who.textContent) +
      who.textContent.length).replace(/^ /, "");
    var indent = new Array(codePoints(head) + 1).join(" ");
    return head + rest.split(LINE_BREAKS).join("\n" + indent);
  }

  function clockOf(date) {
    return two(date.getHours()) + ":" + two(date.getMinutes());
  }

  // -- interests ---------------------------------------------------------------

  // What the person typed in the Interests box, up to each comma (and all of
  // it on Enter), becomes chips.  A tag the server would refuse stays in the
  // box, with the reason beside it; "keepLast" leaves the text after the last
  // comma in the box, still being typed.
  function takeInterests(keepLast) {
    var parts = interestBox.value.split(",");
    var last = keepLast ? parts.pop() : "";
    var added = interests.slice();
    var left = null;
    var note = "";
    for (var i = 0; i < parts.length; i++) {
      var problem = interestProblem(parts[i], added);
      if (problem === "") {
        added.push(normaliseInterest(parts[i]));
      } else if (problem) {
        note = problem;
        left = parts.slice(i);
        break;
      }
    }
    if (left) {
      if (keepLast) left.push(last);
      last = left.join(",");
    }
    if (interestBox.value !== last) interestBox.value = last;
    if (!sameTags(added, interests)) setInterests(added);
    showInterestNote(note);
  }

  // Why the server would refuse the tag "raw" after "tags": a sentence; ""
  // when it would not; null when there is nothing to add (blank, or already
  // there).
  function interestProblem(raw, tags) {
    var tag = normaliseInterest(raw);
    if (!tag || tags.indexOf(tag) >= 0) return null;
    var length = codePoints(tag);
    if (length > interestLength) {
      return (
        "An interest can be at most " + interestLength + " characters long; that one has " +
        length + "."
      );
    }
    if (CONTROLS.test(tag) || (typeof raw.isWellFormed === "function" && !raw.isWellFormed())) {
      return "That interest contains characters that cannot be sent.";
    }
    if (tags.length >= maxInterests) {
      return "You can have at most " + maxInterests + " interests: remove one first.";
    }
    return "";
  }

  function removeInterest(tag) {
    var index = interests.indexOf(tag);
    if (index < 0) return;
    var left = interests.slice();
    left.splice(index, 1);
    setInterests(left);
    showInterestNote("");
  }

  // The person's list changed (or the server's answer replaced it): keep it,
  // show it, and tell the server soon.
  function setInterests(tags) {
    interests = tags;
    saveInterests(tags);
    renderChips();
    sendInterestsSoon();
  }

  function sendInterestsSoon(delay) {
    clearTimeout(interestsTimer);
    interestsTimer = setTimeout(sendInterests, delay || INTERESTS_DEBOUNCE_MS);
  }

  // Give the server the person's list, if it differs from the last one sent
  // and the command budget allows; a connection still to come gives it in
  // its address.
  function sendInterests() {
    interestsTimer = 0;
    if (!connected || sameTags(interests, interestsSent)) return;
    if (!queueBudget()) {
      interestsTimer = setTimeout(sendInterests, INTERESTS_RETRY_MS);
      return;
    }
    var tags = interests.slice();
    if (!transmit({ type: "interests", tags: tags })) return;
    interestsSent = tags;
    interestsOwed += 1;
  }

  // The server's answer: the list it keeps now.  If it answers the last
  // list sent, and the person has changed nothing since, its words are the
  // last (it normalises; the page only guesses).
  function onInterests(given) {
    if (!Array.isArray(given)) return;
    var tags = given.filter(function (tag) {
      return typeof tag === "string" && tag !== "";
    });
    if (interestsOwed > 0) interestsOwed -= 1;
    interestsHeld = tags;
    if (interestsOwed === 0 && sameTags(interests, interestsSent)) {
      interestsSent = tags.slice();
      if (!sameTags(interests, tags)) setInterests(tags.slice());
    }
  }

  // The server refused the interests sent (it keeps the ones it had): the
  // chips show those again, if the person has changed nothing since.
  function interestsRefused(message) {
    interestsOwed -= 1;
    if (interestsOwed > 0 || !sameTags(interests, interestsSent)) return;
    interestsSent = interestsHeld.slice();
    setInterests(interestsHeld.slice());
    showInterestNote(
      "Your interests were not accepted" +
        (typeof message === "string" && message ? ": " + message : ".")
    );
  }

  // The first line of a new chat: what the two share, or that nobody who
  // shares the person's interests was around.
  function introduce(common) {
    var shared = Array.isArray(common)
      ? common.filter(function (tag) {
          return typeof tag === "string" && tag !== "";
        })
      : [];
    if (shared.length) addInfo(["You both like ", shared, "."]);
    else if (interestsHeld.length && interestWait > 0) addInfo(FALLBACK_LINE);
  }

  // What goes before the i-th of n words: "a", "a and b", "a, b and c".
  function listJoin(i, n) {
    return i === n - 1 ? " and " : ", ";
  }

  function renderChips() {
    // Keep the keyboard on the same place in the row of chips.
    var buttons = chipsEl.querySelectorAll("button");
    var focused = Array.prototype.indexOf.call(buttons, document.activeElement);
    chipsEl.textContent = "";
    interests.forEach(function (tag) {
      var chip = document.createElement("li");
      chip.className = "chip";
      var text = document.createElement("span");
      text.className = "chip-text";
      text.textContent = tag;
      var remove = document.createElement("button");
      remove.type = "button";
      remove.className = "chip-remove";
      remove.setAttribute("aria-label", "Remove " + tag);
      remove.addEventListener("click", function () {
        removeInterest(tag);
      });
      chip.appendChild(text);
      chip.appendChild(remove);
      chipsEl.appendChild(chip);
    });
    chipsEl.hidden = interests.length === 0;
    if (focused >= 0) {
      buttons = chipsEl.querySelectorAll("button");
      if (buttons.length) buttons[Math.min(focused, buttons.length - 1)].focus();
      else interestBox.focus();
    }
  }

  // A server that does not match by interests gets no box.
  function renderInterests() {
    var off = interestWait === 0;
    if (interestsEl.hidden === off) return;
    if (off && interestsEl.contains(document.activeElement)) box.focus();
    interestsEl.hidden = off;
  }

  function showInterestNote(text) {
    if (interestNoteEl.textContent !== text) interestNoteEl.textContent = text;
  }

  // A server's limits, once known, may be tighter than the saved list.
  function fitInterests() {
    var fitting = interests
      .filter(function (tag) {
        return codePoints(tag) <= interestLength;
      })
      .slice(0, maxInterests);
    if (sameTags(fitting, interests)) return;
    setInterests(fitting);
    showInterestNote(
      "This server takes at most " + maxInterests + " interests of at most " + interestLength +
        " characters: some were left out."
    );
  }

  // One interest as the server compares it: Unicode NFKC, case-folded,
  // trimmed, every run of whitespace inside it one space.
  function normaliseInterest(text) {
    var folded = foldCase(text.normalize("NFKC")).normalize("NFKC");
    return folded.replace(SPACES, " ").replace(/^ | $/g, "");
  }

  // Unicode's full case folding (Python's str.casefold), from what
  // JavaScript has: lower, upper, then lower again folds "ß" and "ẞ" to
  // "ss" as casefold does; dotless "ı" stays, Cherokee folds to its capitals,
  // and the final sigma "ς" to "σ".
  function foldCase(text) {
    return text
      .replace(/[^ıᎠ-Ᏽᏸ-ᏽꭰ-ꮿ]+/g, function (run) {
        return run.toLowerCase().toUpperCase().toLowerCase();
      })
      .replace(/[ᏸ-ᏽꭰ-ꮿ]/g, function (c) {
        return c.toUpperCase();
      })
      .replace(/ς/g, "σ");
  }

  function sameTags(a, b) {
    if (!a || !b || a.length !== b.length) return false;
    for (var i = 0; i < a.length; i++) {
      if (a[i] !== b[i]) return false;
    }
    return true;
  }

  function saveInterests(tags) {
    try {
      if (tags.length) localStorage.setItem(INTERESTS_KEY, JSON.stringify(tags));
      else localStorage.removeItem(INTERESTS_KEY);
    } catch (err) {
      // Storage may be unavailable: the list lasts as long as the page.
    }
  }

  // The saved list, normalised again, each once, within protocol v1's limits
  // (the server's own, once known, are applied then).
  function loadInterests() {
    var saved;
    try {
      saved = JSON.parse(localStorage.getItem(INTERESTS_KEY) || "[]");
    } catch (err) {
      saved = [];
    }
    var tags = [];
    if (!Array.isArray(saved)) return tags;
    saved.forEach(function (raw) {
      if (typeof raw !== "string" || tags.length >= DEFAULT_LIMITS.interests) return;
      var tag = normaliseInterest(raw);
      if (
        tag &&
        tags.indexOf(tag) < 0 &&
        codePoints(tag) <= DEFAULT_LIMITS.interest_length &&
        !CONTROLS.test(tag) &&
        !(typeof raw.isWellFormed === "function" && !raw.isWellFormed())
      ) {
        tags.push(tag);
      }
    });
    return tags;
  }

  function onInterestKeyDown(ev) {
    if (ev.isComposing || ev.keyCode === 229) return;
    if (ev.key === "Enter" || ev.key === ",") {
      ev.preventDefault();
      takeInterests(false);
    } else if (
      ev.key === "Backspace" &&
      !ev.repeat &&
      interestBox.value === "" &&
      interests.length
    ) {
      // An empty box: Backspace takes the last chip back.
      ev.preventDefault();
      removeInterest(interests[interests.length - 1]);
    }
  }

  function onInterestInput() {
    // A comma typed where keys are not told apart, or pasted.
    if (interestBox.value.indexOf(",") >= 0) takeInterests(true);
    else showInterestNote("");
  }

  // -- video -------------------------------------------------------------------

  // The Video button: turn the camera on and look for strangers with one,
  // or turn it off and go back to text.
  function toggleVideo() {
    if (cameraPending) return;
    if (videoMode) {
      stopCamera();
      saveVideoChoice(false);
      tellMode();
      render();
      return;
    }
    cameraPending = true;
    clearNotice();
    render();
    openCamera(true).then(function (stream) {
      cameraPending = false;
      if (!stream) {
        saveVideoChoice(false);
        showNotice(CAMERA_FAILED);
        render();
        return;
      }
      useCamera(stream);
      saveVideoChoice(true);
      tellMode();
      render();
    });
  }

  // The camera (and the microphone, where there is one), or null if the
  // browser or the person refuses, or there is no camera.
  function openCamera(withMicrophone) {
    var media = navigator.mediaDevices;
    if (!media || typeof media.getUserMedia !== "function") return Promise.resolve(null);
    return media
      .getUserMedia({ video: true, audio: withMicrophone })
      .catch(function (err) {
        var name = err && err.name;
        if (withMicrophone && (name === "NotFoundError" || name === "NotReadableError")) {
          // No microphone (or a busy one): the camera alone will do.
          return media.getUserMedia({ video: true });
        }
        throw err;
      })
      .catch(function () {
        return null;
      });
  }

  function useCamera(stream) {
    localStream = stream;
    videoMode = true;
    micMuted = false;
    cameraPaused = false;
    localEl.srcObject = stream;
    playQuietly(localEl);
    stream.getVideoTracks().forEach(function (track) {
      track.addEventListener("ended", function () {
        // Unplugged, or taken away by the browser.
        if (localStream !== stream) return;
        stopCamera();
        showNotice(CAMERA_ENDED);
        tellMode();
        render();
      });
    });
  }

  function stopCamera() {
    closePeer();
    if (localStream) stopTracks(localStream);
    localStream = null;
    localEl.srcObject = null;
    videoMode = false;
    micMuted = false;
    cameraPaused = false;
  }

  // Tell the server the mode the person chose, and find a stranger of that
  // kind: "video", then "next" if the person was in a chat or idle (a waiting
  // person is moved to the other queue at once).  Over the command budget,
  // try again a little later; a new connection says it in its address.
  function tellMode() {
    clearTimeout(modeTimer);
    modeTimer = 0;
    if (!connected || videoMode === socketVideo) return;
    var thenNext = phase === "chatting" || isIdle();
    if (!queueBudget(thenNext ? 2 : 1)) {
      modeTimer = setTimeout(tellMode, 1000);
      return;
    }
    if (!transmit({ type: "video", on: videoMode })) return;
    socketVideo = videoMode;
    lastQueueCommandAt = Date.now();
    if (thenNext) {
      disarmEsc();
      disarmReport();
      disarmBlock();
      sendNext();
    } else {
      switchPending = true;
      moveOwed = true;
      setWait(null); // that was about the queue left
      render();
    }
  }

  function toggleMicrophone() {
    micMuted = !micMuted;
    applyTrackStates();
    render();
  }

  function toggleCamera() {
    cameraPaused = !cameraPaused;
    applyTrackStates();
    render();
  }

  function applyTrackStates() {
    if (!localStream) return;
    localStream.getAudioTracks().forEach(function (track) {
      track.enabled = !micMuted;
    });
    localStream.getVideoTracks().forEach(function (track) {
      track.enabled = !cameraPaused;
    });
  }

  // A video chat has begun: one side offers, the other answers.
  function startPeer(offer, iceServers) {
    closePeer();
    var pc;
    try {
      pc = new RTCPeerConnection({ iceServers: cleanIceServers(iceServers) });
    } catch (err) {
      videoFailed();
      return;
    }
    var p = {
      pc: pc,
      offer: offer,
      stream: null,
      candidates: [],
      chain: Promise.resolve(),
      connected: false,
    };
    peer = p;
    localStream.getTracks().forEach(function (track) {
      pc.addTrack(track, localStream);
    });
    pc.addEventListener("icecandidate", function (ev) {
      if (peer === p && ev.candidate) queueSignal({ candidate: ev.candidate.toJSON() });
    });
    pc.addEventListener("track", function (ev) {
      if (peer !== p) return;
      if (ev.streams && ev.streams[0]) {
        p.stream = ev.streams[0];
      } else {
        if (!p.stream) p.stream = new MediaStream();
        p.stream.addTrack(ev.track);
      }
      showRemote(p.stream);
    });
    pc.addEventListener("iceconnectionstatechange", function () {
      if (peer !== p) return;
      var state = pc.iceConnectionState;
      if (state === "connected" || state === "completed") {
        p.connected = true;
        clearTimeout(videoTimer);
        videoTimer = 0;
        hideVideoNote();
        if (p.stream) showRemote(p.stream);
        render();
      } else if (state === "failed") {
        videoFailed();
      }
    });
    videoTimer = setTimeout(function () {
      videoTimer = 0;
      if (peer === p && !p.connected) videoFailed();
    }, VIDEO_CONNECT_MS);
    if (offer) {
      pc.createOffer()
        .then(function (description) {
          return pc.setLocalDescription(description);
        })
        .then(function () {
          if (peer === p) queueSignal({ description: pc.localDescription.toJSON() });
        })
        .catch(function () {
          if (peer === p) videoFailed();
        });
    }
    render();
  }

  // The partner's signalling, one at a time and in order.
  function onSignal(p, data) {
    p.chain = p.chain
      .then(function () {
        if (peer !== p) return null;
        var pc = p.pc;
        var description = data.description;
        if (description && typeof description === "object") {
          var wanted = p.offer ? "answer" : "offer";
          if (description.type !== wanted || pc.remoteDescription) return null;
          return pc.setRemoteDescription(description).then(function () {
            if (peer !== p) return null;
            var early = p.candidates;
            p.candidates = [];
            early.forEach(function (candidate) {
              pc.addIceCandidate(candidate).catch(ignore);
            });
            if (description.type !== "offer") return null;
            return pc
              .createAnswer()
              .then(function (answer) {
                return pc.setLocalDescription(answer);
              })
              .then(function () {
                if (peer === p) queueSignal({ description: pc.localDescription.toJSON() });
              });
          });
        }
        var candidate = data.candidate;
        if (candidate && typeof candidate === "object") {
          // Candidates may come before the offer they belong to is set.
          if (!pc.remoteDescription) p.candidates.push(candidate);
          else return pc.addIceCandidate(candidate).catch(ignore);
        }
        return null;
      })
      .catch(function () {
        if (peer === p) videoFailed();
      });
  }

  // The server's list, as RTCPeerConnection takes it: anything else left out.
  function cleanIceServers(given) {
    if (!Array.isArray(given)) return [];
    var servers = [];
    given.forEach(function (server) {
      if (!server || typeof server !== "object") return;
      var urls = typeof server.urls === "string" ? [server.urls] : server.urls;
      if (!Array.isArray(urls)) return;
      urls = urls.filter(function (url) {
        return typeof url === "string" && /^(stuns?|turns?):/i.test(url);
      });
      if (!urls.length) return;
      var clean = { urls: urls };
      if (typeof server.username === "string") clean.username = server.username;
      if (typeof server.credential === "string") clean.credential = server.credential;
      servers.push(clean);
    });
    return servers;
  }

  // Signalling keeps within the server's signal budget: what is over it
  // waits here, and goes as the budget refills.
  function queueSignal(data) {
    var frame = JSON.stringify({ type: "signal", data: data });
    if (utf8Length(frame) > signalLength) return; // the server would refuse it
    signalQueue.push(frame);
    if (!signalTimer) flushSignals();
  }

  function flushSignals() {
    signalTimer = 0;
    while (signalQueue.length) {
      if (!peer || phase !== "chatting" || !ws || ws.readyState !== WebSocket.OPEN) {
        signalQueue = [];
        return;
      }
      if (!signalBudget()) {
        signalTimer = setTimeout(flushSignals, signalDelay);
        return;
      }
      ws.send(signalQueue.shift());
    }
  }

  // The chat is over (or was never a video chat): close its connection and
  // take the stranger's picture away at once.
  function closePeer() {
    clearTimeout(videoTimer);
    videoTimer = 0;
    clearTimeout(signalTimer);
    signalTimer = 0;
    signalQueue = [];
    if (peer) {
      var pc = peer.pc;
      peer = null;
      try {
        pc.close();
      } catch (err) {
        // Already closed.
      }
    }
    remoteEl.pause();
    remoteEl.srcObject = null;
    remoteEl.hidden = true;
    remoteEl.muted = false;
    unmuteBtn.hidden = true;
    hideVideoNote();
  }

  function showRemote(stream) {
    if (remoteEl.srcObject !== stream) remoteEl.srcObject = stream;
    remoteEl.hidden = false;
    var playing = remoteEl.play();
    if (playing && typeof playing.catch === "function") {
      playing.catch(function (err) {
        if (remoteEl.srcObject !== stream || !err || err.name !== "NotAllowedError") return;
        // The browser wants a click before it plays sound: play the picture
        // now, and the sound after that click.
        remoteEl.muted = true;
        unmuteBtn.hidden = false;
        playQuietly(remoteEl);
      });
    }
  }

  function unmuteStranger() {
    remoteEl.muted = false;
    unmuteBtn.hidden = true;
    playQuietly(remoteEl);
    if (document.activeElement === document.body) box.focus();
  }

  function videoFailed() {
    clearTimeout(videoTimer);
    videoTimer = 0;
    if (phase !== "chatting") return;
    remoteEl.hidden = true;
    videoNoteEl.textContent = VIDEO_FAILED;
    videoNextBtn.hidden = false;
    render();
  }

  function hideVideoNote() {
    var hadFocus = document.activeElement === videoNextBtn;
    videoNoteEl.textContent = "";
    videoNextBtn.hidden = true;
    if (hadFocus) (nextBtn.disabled ? logEl : nextBtn).focus();
  }

  function stopTracks(stream) {
    stream.getTracks().forEach(function (track) {
      track.stop();
    });
  }

  function playQuietly(element) {
    var playing = element.play();
    if (playing && typeof playing.catch === "function") playing.catch(ignore);
  }

  function ignore() {}

  function utf8Length(text) {
    return new TextEncoder().encode(text).length;
  }

  function saveVideoChoice(on) {
    try {
      if (on) localStorage.setItem(VIDEO_KEY, "1");
      else localStorage.removeItem(VIDEO_KEY);
    } catch (err) {
      // Storage may be unavailable: the choice lasts as long as the page.
    }
  }

  function choseVideo() {
    try {
      return localStorage.getItem(VIDEO_KEY) === "1";
    } catch (err) {
      return false;
    }
  }

  // Whether the browser already lets this page use the camera (or the
  // microphone), without asking: only then is it opened on load.
  function permitted(name) {
    var permissions = navigator.permissions;
    if (!permissions || typeof permissions.query !== "function") return Promise.resolve(false);
    try {
      return permissions
        .query({ name: name })
        .then(function (status) {
          return status.state === "granted";
        })
        .catch(function () {
          return false;
        });
    } catch (err) {
      return Promise.resolve(false);
    }
  }

  // On load: video again if the person chose it last time and the browser
  // remembers the permission; then connect, in the mode that came of it.
  function restoreVideo(then) {
    if (!choseVideo()) {
      then();
      return;
    }
    var done = false;
    function finish() {
      if (done) return;
      done = true;
      then();
    }
    var guard = setTimeout(finish, CAMERA_GUARD_MS);
    cameraPending = true; // the Video button waits for this
    render();
    permitted("camera")
      .then(function (camera) {
        if (!camera) return false;
        return permitted("microphone").then(openCamera);
      })
      .then(function (stream) {
        clearTimeout(guard);
        cameraPending = false;
        if (stream) {
          useCamera(stream);
          tellMode(); // if the connection went ahead without it
        } else if (stream === null) {
          showNotice(CAMERA_FAILED);
        }
        render();
        finish();
      });
  }

  // -- the first visit -------------------------------------------------------

  function welcomed() {
    try {
      return localStorage.getItem(WELCOME_KEY) === "1";
    } catch (err) {
      return false;
    }
  }

  // On load: agreed before, go on at once.  Otherwise ask the server for its
  // card; no card (--no-welcome), or no answer (an older server, the
  // network), go on at once too: the card must never keep anyone out.
  function welcome(then) {
    if (welcomed()) {
      then();
      return;
    }
    fetch(new URL("welcome", location.href).href, { cache: "no-store" })
      .then(function (response) {
        return response.ok ? response.json() : null;
      })
      .catch(function () {
        return null;
      })
      .then(function (answer) {
        if (!answer || typeof answer !== "object" || answer.welcome !== true) {
          then();
          return;
        }
        var rules = Array.isArray(answer.rules)
          ? answer.rules.filter(function (rule) {
              return typeof rule === "string" && !isBlank(rule);
            })
          : [];
        showWelcome(rules, then);
      });
  }

  // The card, with the rules as the server gave them: text only, since the
  // file is the operator's and may hold anything.  "then" runs once the
  // person agrees.
  function showWelcome(rules, then) {
    welcomeRulesEl.textContent = "";
    rules.forEach(function (rule) {
      var item = document.createElement("li");
      item.textContent = rule;
      welcomeRulesEl.appendChild(item);
    });
    welcomeRulesEl.hidden = !rules.length;
    welcomeRulesTitle.hidden = !rules.length;
    welcoming = true;
    behindWelcome.forEach(function (element) {
      element.inert = true;
      element.setAttribute("inert", ""); // browsers without the property
    });
    welcomeEl.hidden = false;
    render();
    // The keyboard starts where the one thing to do is; the card's text
    // (its description) is read with it.
    welcomeStartBtn.focus();
    welcomeStartBtn.addEventListener("click", function agree() {
      welcomeStartBtn.removeEventListener("click", agree);
      try {
        localStorage.setItem(WELCOME_KEY, "1");
      } catch (err) {
        // Storage may be unavailable: the card shows again next visit.
      }
      welcoming = false;
      welcomeEl.hidden = true;
      behindWelcome.forEach(function (element) {
        element.inert = false;
        element.removeAttribute("inert");
      });
      render();
      box.focus(); // the next thing to do is to say hi
      then();
    });
  }

  // -- the view --------------------------------------------------------------

  function isIdle() {
    return phase === "partnerLeft" || phase === "youLeft";
  }

  function setPhase(value) {
    // Any change of chat (a new "waiting" included) starts without a reason
    // to wait: the server says it again after "waiting" if it still holds.
    setWait(null);
    if (value !== "chatting") {
      hideTyping();
      resetTypingSignal();
      disarmReport();
      disarmBlock();
    }
    if (value !== "looking") reported = false;
    if (value !== "chatting") {
      closePeer();
      partnerAway = false;
    }
    phase = value;
    render();
  }

  function render() {
    var banned = isBanned();
    var offline = !connected && lost && !banned;
    // Why the wait is long, as the server said (not about the queue the
    // person is leaving: the new mode is not yet told to the server).
    var explained = connected && phase === "looking" && waitReason && videoMode === socketVideo;
    var status;
    if (welcoming) status = ""; // nothing is going on yet: the card says why
    else if (banned) status = banStatus();
    else if (!connected && replaced) status = STATUS.replaced;
    else if (!connected && refusal) status = refusalText();
    else if (!connected && lost) status = STATUS.lost;
    else if (phase === "looking" && reported) status = (videoMode ? VIDEO_STATUS : STATUS).reported;
    else if (phase === "looking" && videoMode) status = VIDEO_STATUS.looking;
    else status = STATUS[phase];
    if (statusEl.textContent !== status) statusEl.textContent = status;
    // Below it, the reason: the status line keeps saying what goes on.
    var why = explained ? waitText() : "";
    if (whyEl.textContent !== why) whyEl.textContent = why;
    whyEl.hidden = !why;
    checkNotice();

    // "Try again now" while refused; after another tab took the session,
    // the way to start over here.
    var retryLabel = replaced ? START_OVER : TRY_AGAIN;
    if (retryBtn.textContent !== retryLabel) retryBtn.textContent = retryLabel;
    var retryShown = !connected && !banned && (Boolean(refusal) || replaced);
    if (retryBtn.hidden === retryShown) retryBtn.hidden = !retryShown;

    var label = escTimer ? "Really?" : isIdle() ? "Start" : "Next";
    if (nextBtn.textContent !== label) nextBtn.textContent = label;
    nextBtn.classList.toggle("really", Boolean(escTimer));
    nextBtn.disabled = !connected || banned;
    stopBtn.disabled = !connected || banned || isIdle();
    sendBtn.disabled = banned || offline;
    // Nothing typed can be sent while offline: the box says so by being
    // disabled (keeping what is in it), and gets the focus back after.
    if (box.disabled !== offline) {
      if (offline) boxHadFocus = document.activeElement === box;
      box.disabled = offline;
      if (!offline && boxHadFocus && document.activeElement === document.body) box.focus();
    }

    var canReport = connected && !banned && phase === "chatting";
    renderAsking(reportBtn, canReport, reportTimer ? "Really report?" : "Report");
    renderAsking(blockBtn, canReport, blockTimer ? "Really block?" : "Block");
    document.body.setAttribute(
      "data-state",
      banned ? "banned" : connected ? phase : "offline"
    );

    setAttribute(videoBtn, "aria-pressed", String(videoMode));
    setAttribute(soundBtn, "aria-pressed", String(soundOn));
    // Not disabled while the camera is being opened: that would take the
    // keyboard's focus away from it.
    setAttribute(videoBtn, "aria-disabled", String(cameraPending));
    setAttribute(micBtn, "aria-pressed", String(micMuted));
    setAttribute(cameraBtn, "aria-pressed", String(cameraPaused));
    if (stageEl.hidden !== !videoMode) {
      stageEl.hidden = !videoMode;
      chatEl.classList.toggle("video", videoMode);
    }
    var waitingFor = "";
    if (videoMode && connected && !banned && !videoNoteEl.textContent) {
      if (phase === "looking") waitingFor = VIDEO_STATUS.looking;
      else if (phase === "chatting" && peer) waitingFor = "Connecting video…";
    }
    if (placeholderEl.textContent !== waitingFor) placeholderEl.textContent = waitingFor;
  }

  // Report or Block: shown, and enabled, only in a chat; "label" asks for
  // the second press.
  function renderAsking(button, can, label) {
    if (button.textContent !== label) button.textContent = label;
    button.classList.toggle("really", label.indexOf("Really") === 0);
    button.disabled = !can;
    if (button.hidden !== !can) {
      var hadFocus = document.activeElement === button;
      button.hidden = !can;
      // Keep the keyboard where it was: on the row of chat controls.
      if (hadFocus) (nextBtn.disabled ? logEl : nextBtn).focus();
    }
  }

  // Only a change is written: render() runs on every event.
  function setAttribute(element, name, value) {
    if (element.getAttribute(name) !== value) element.setAttribute(name, value);
  }

  function addLine(who, text) {
    var nearBottom = logEl.scrollHeight - logEl.scrollTop - logEl.clientHeight < 48;
    var line = document.createElement("p");
    line.className = "line " + who;
    stamp(line);
    var name = document.createElement("span");
    name.className = "who";
    name.textContent = who === "you" ? "You:" : "Stranger:";
    // Isolated for bidi (<bdi>): an override or an embedding in the text,
    // closed or not, ends with it, and cannot reorder the label or the mark
    // after it ("sending…").
    var body = document.createElement("bdi");
    body.className = "text";
    var linked = appendLinked(body, text);
    line.appendChild(name);
    line.appendChild(document.createTextNode(" "));
    line.appendChild(body);
    logEl.appendChild(line);
    if (linked && who === "stranger" && !linksWarned) {
      // Once per page: a link from a stranger may lead anywhere.
      linksWarned = true;
      addInfo(LINK_WARNING);
    }
    if (nearBottom || who === "you") logEl.scrollTop = logEl.scrollHeight;
    saveBtn.disabled = false;
    return line;
  }

  // The text, as text nodes, with each http(s) address in it a link that
  // opens in a new tab and tells the page it leads to nothing (no opener,
  // no referrer, no endorsement).  Built node by node, never as markup;
  // other schemes (javascript:, data:…) stay text.  Says whether it made
  // any link.
  function appendLinked(parent, text) {
    var found = false;
    var at = 0;
    var match;
    URLS.lastIndex = 0;
    while ((match = URLS.exec(text))) {
      var address = match[0].replace(TRAILING, "");
      var url = null;
      try {
        url = new URL(address);
      } catch (err) {
        url = null;
      }
      if (!url || (url.protocol !== "http:" && url.protocol !== "https:")) continue;
      if (match.index > at) parent.appendChild(document.createTextNode(text.slice(at, match.index)));
      var link = document.createElement("a");
      link.href = url.href;
      link.target = "_blank";
      link.rel = "noopener noreferrer nofollow";
      link.textContent = address;
      parent.appendChild(link);
      at = match.index + address.length;
      URLS.lastIndex = at;
      found = true;
    }
    if (at < text.length) parent.appendChild(document.createTextNode(text.slice(at)));
    return found;
  }

  // The server's answer to a message of the person's: delivered (no
  // reason), or refused for a reason.  A saved log keeps the mark, so that
  // it never shows as said what the stranger never read.
  function confirmLine(line, reason, verdict) {
    line.classList.remove("pending");
    if (reason === null) {
      setLineState(line, "");
      return;
    }
    line.classList.add("failed");
    setLineState(line, (verdict || "not delivered") + ": " + reason);
  }

  // The connection is gone, and with it every answer still owed: the lines
  // waiting for one may or may not have reached the stranger, so they say
  // "not confirmed" rather than "not delivered".  While a connection stays
  // open nothing else is needed: the server handles frames in order and
  // answers every message that carries an id, so a line sent just before
  // next, stop or the partner leaving still gets its own answer ("sent", or
  // not_paired), matched by id whatever chat the page is in by then.
  function abandonUnconfirmed() {
    for (var id in unconfirmed) {
      if (unconfirmed.hasOwnProperty(id)) {
        confirmLine(unconfirmed[id], "the connection was lost", "not confirmed");
      }
    }
    unconfirmed = {};
  }

  function setLineState(line, text) {
    var state = line.querySelector(".state");
    if (!text) {
      if (state) state.remove();
      return;
    }
    if (!state) {
      state = document.createElement("span");
      state.className = "state";
      line.appendChild(state);
    }
    state.textContent = " (" + text + ")";
  }

  // A line from the page itself, not from either person: its parts are
  // strings, and a list of strings (words that came from the server, each
  // isolated for bidi as a message is).
  function addInfo(parts) {
    var line = document.createElement("p");
    line.className = "line info";
    stamp(line);
    [].concat(parts).forEach(function (part) {
      if (typeof part === "string") {
        line.appendChild(document.createTextNode(part));
        return;
      }
      part.forEach(function (word, i) {
        if (i) line.appendChild(document.createTextNode(listJoin(i, part.length)));
        var isolated = document.createElement("bdi");
        isolated.textContent = word;
        line.appendChild(isolated);
      });
    });
    logEl.appendChild(line);
    saveBtn.disabled = false;
    return line;
  }

  // The chat ended: said in the log itself, after its last line, where it
  // cannot be missed (the status line says it too, but changes again).  A
  // <div>, not a <p>: it is no one's line, and not the page's remark
  // either, but the end of the conversation.
  function addEvent(text) {
    var nearBottom = logEl.scrollHeight - logEl.scrollTop - logEl.clientHeight < 48;
    var line = document.createElement("div");
    line.className = "line event";
    stamp(line);
    line.textContent = text;
    logEl.appendChild(line);
    if (nearBottom) logEl.scrollTop = logEl.scrollHeight;
    saveBtn.disabled = false;
    return line;
  }

  // When the line was added, for the saved log.
  function stamp(line) {
    line.setAttribute("data-at", String(Date.now()));
  }

  function clearLog() {
    logEl.textContent = "";
    saveBtn.disabled = true;
    unconfirmed = {}; // their lines are gone; answers still on the way are ignored
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

  // A notice says what is so now; "holds", when given, tells whether it
  // still is, and render() (which runs on every change of state) takes the
  // notice away the moment it does not.
  function showNotice(text, holds) {
    noticeEl.textContent = text;
    noticeHolds = holds || null;
  }

  // Lost, the connection takes the chat with it: what was typed cannot go
  // to this stranger any more, and the next connection starts afresh (as
  // the person left it: looking, or idle).
  function showOffline() {
    var text = OFFLINE;
    if (isIdle()) text = OFFLINE_IDLE;
    else if (phase === "chatting" && mayResume) {
      // The server keeps the chat for a while (see the top).
      text = OFFLINE_CHAT.replace("{n}", String(Math.round(resumeGrace)));
    }
    showNotice(text, function () {
      return !connected && !isBanned() && !replaced;
    });
  }

  function clearNotice() {
    noticeEl.textContent = "";
    noticeHolds = null;
  }

  function checkNotice() {
    if (noticeHolds && !noticeHolds()) clearNotice();
  }

  // Holds while this connection lasts and "test" is true: whatever the
  // page said about the chat, a new connection is a new start.
  function onThisConnection(test) {
    var sock = ws;
    return function () {
      return ws === sock && connected && test();
    };
  }

  // A budget ran out: the notice holds until it has refilled enough for
  // the person to try again, and goes then by itself.
  function showBudgetNotice(text, take, cost) {
    var sock = ws;
    clearTimeout(budgetTimer);
    budgetTimer = setTimeout(render, take.wait(cost) + 50);
    showNotice(text, function () {
      return ws === sock && take.wait(cost) > 0;
    });
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

  // While the tab is hidden its title says what happened meanwhile: how
  // many messages came, and whether the stranger left or a new one came.
  function countUnread() {
    if (document.visibilityState !== "hidden") return;
    unread += 1;
    renderTitle();
  }

  function tellHidden(what) {
    if (document.visibilityState !== "hidden") return;
    titleNote = what;
    renderTitle();
  }

  function renderTitle() {
    var title = (unread ? "(" + unread + ") " : "") + (titleNote ? titleNote + " · " : "") +
      baseTitle;
    if (document.title !== title) document.title = title;
  }

  // -- sound -------------------------------------------------------------------

  // The Sound button: a short beep, while the tab is hidden, when a stranger
  // is found or writes.  Off unless the person turns it on; remembered.
  function toggleSound() {
    soundOn = !soundOn;
    try {
      if (soundOn) localStorage.setItem(SOUND_KEY, "1");
      else localStorage.removeItem(SOUND_KEY);
    } catch (err) {
      // Storage may be unavailable: the choice lasts as long as the page.
    }
    // Made (or woken) on the press: browsers let sound start only after one.
    if (soundOn) audioContext();
    render();
  }

  function loadSound() {
    try {
      return localStorage.getItem(SOUND_KEY) === "1";
    } catch (err) {
      return false;
    }
  }

  function audioContext() {
    var Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return null;
    try {
      if (!audio) audio = new Context();
      if (audio.state === "suspended") audio.resume().catch(ignore);
    } catch (err) {
      return null;
    }
    return audio;
  }

  // A beep from an oscillator (no file to fetch), faded in and out so that
  // it does not click.
  function chime() {
    if (!soundOn || document.visibilityState !== "hidden") return;
    var context = audioContext();
    if (!context) return;
    try {
      var now = context.currentTime;
      var tone = context.createOscillator();
      var volume = context.createGain();
      tone.type = "sine";
      tone.frequency.setValueAtTime(880, now);
      volume.gain.setValueAtTime(0.0001, now);
      volume.gain.exponentialRampToValueAtTime(0.2, now + 0.02);
      volume.gain.exponentialRampToValueAtTime(0.0001, now + 0.18);
      tone.connect(volume);
      volume.connect(context.destination);
      tone.start(now);
      tone.stop(now + 0.2);
    } catch (err) {
      // No sound, then: the title still says what happened.
    }
  }

  function onVisibilityChange() {
    if (document.visibilityState === "hidden") return;
    unread = 0;
    titleNote = "";
    renderTitle();
  }

  // -- the session's token --------------------------------------------------

  // This tab's token (sessionStorage: a reload keeps it, another tab has
  // its own; a duplicated tab starts with a copy, see the top).
  function loadToken() {
    try {
      var token = sessionStorage.getItem(SESSION_KEY);
      return token && TOKEN_FORM.test(token) ? token : "";
    } catch (err) {
      return "";
    }
  }

  function saveToken(token) {
    sessionToken = token;
    try {
      sessionStorage.setItem(SESSION_KEY, token);
    } catch (err) {
      // Storage may be unavailable: the token lasts as long as the page.
    }
  }

  function forgetToken() {
    sessionToken = "";
    try {
      sessionStorage.removeItem(SESSION_KEY);
    } catch (err) {
      // Nothing was kept, then.
    }
  }

  // -- helpers ---------------------------------------------------------------

  // Take the server's limits (the first "online" event's "limits"), keeping
  // the defaults for any that is missing or not a positive number.
  function applyLimits(given) {
    function pick(name) {
      var value = given[name];
      return typeof value === "number" && isFinite(value) && value > 0
        ? value
        : DEFAULT_LIMITS[name];
    }
    maxLength = Math.floor(pick("message_length"));
    messageBudget = underBudget(pick("message_rate"), pick("message_burst"));
    queueBudget = underBudget(pick("command_rate"), pick("command_burst"));
    signalLength = Math.floor(pick("signal_length"));
    signalBudget = underBudget(pick("signal_rate"), pick("signal_burst"));
    signalDelay = 1000 / (pick("signal_rate") * BUDGET_SHARE);
    updateCounter();
    maxInterests = Math.floor(pick("interests"));
    interestLength = Math.floor(pick("interest_length"));
    // Here 0 means something: no matching by interests.
    var wait = given.interest_wait;
    interestWait =
      typeof wait === "number" && isFinite(wait) && wait >= 0 ? wait : DEFAULT_LIMITS.interest_wait;
    var grace = given.resume_grace;
    resumeGrace =
      typeof grace === "number" && isFinite(grace) && grace >= 0 ? grace : DEFAULT_LIMITS.resume_grace;
    renderInterests();
    fitInterests();
  }

  // A bucket a little under the server's: BUDGET_SHARE of its rate and burst.
  function underBudget(rate, burst) {
    return bucket(rate * BUDGET_SHARE, Math.max(1, Math.floor(burst * BUDGET_SHARE)));
  }

  // A token bucket: refill tokens a second, at most burst of them saved up.
  // take(n) spends n tokens (one by default), or none if there are fewer;
  // take.wait(n) spends nothing and says how many ms until n are there.
  function bucket(refill, burst) {
    var tokens = burst;
    var last = Date.now();
    function fill() {
      var now = Date.now();
      tokens = Math.min(burst, tokens + ((now - last) / 1000) * refill);
      last = now;
    }
    function take(n) {
      var cost = n || 1;
      fill();
      if (tokens < cost) return false;
      tokens -= cost;
      return true;
    }
    take.wait = function (n) {
      fill();
      return Math.max(0, Math.ceil((((n || 1) - tokens) / refill) * 1000));
    };
    return take;
  }

  function isBlank(text) {
    return BLANK.test(text);
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

  function two(n) {
    return (n < 10 ? "0" : "") + n;
  }

  function clockTime(ms) {
    // Local time, rounded up to the minute; the date too if not today.
    var date = new Date(Math.ceil(ms / 60000) * 60000);
    var time = two(date.getHours()) + ":" + two(date.getMinutes());
    var today = new Date();
    if (date.toDateString() === today.toDateString()) return time;
    return date.getFullYear() + "-" + two(date.getMonth() + 1) + "-" + two(date.getDate()) +
      " " + time;
  }

  function fileStamp(date) {
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
  reportBtn.addEventListener("click", report);
  blockBtn.addEventListener("click", block);
  retryBtn.addEventListener("click", retryNow);
  soundBtn.addEventListener("click", toggleSound);
  videoBtn.addEventListener("click", toggleVideo);
  micBtn.addEventListener("click", toggleMicrophone);
  cameraBtn.addEventListener("click", toggleCamera);
  videoNextBtn.addEventListener("click", next);
  unmuteBtn.addEventListener("click", unmuteStranger);
  interestBox.addEventListener("keydown", onInterestKeyDown);
  interestBox.addEventListener("input", onInterestInput);
  document.addEventListener("keydown", onKeyDown);
  document.addEventListener("visibilitychange", onVisibilityChange);
  window.addEventListener("online", onOnline);
  window.addEventListener("offline", onOffline);

  renderChips();
  render();
  welcome(function () {
    restoreVideo(connect);
  });
})();
