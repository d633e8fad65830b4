"use strict";
(function () {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(scheme + "//" + location.host + "/ws");
  const status = document.getElementById("status");
  const log = document.getElementById("log");
  const box = document.getElementById("message");
  function line(text) {
    const p = document.createElement("p");
    p.textContent = text;
    log.appendChild(p);
    log.scrollTop = log.scrollHeight;
  }
  function send(obj) { ws.send(JSON.stringify(obj)); }
  ws.onmessage = function (ev) {
    const e = JSON.parse(ev.data);
    if (e.type === "waiting") status.textContent = "Looking for a stranger…";
    else if (e.type === "paired") status.textContent = "You're now chatting with a random stranger. Say hi!";
    else if (e.type === "message") line("Stranger: " + e.text);
    else if (e.type === "partner_left") status.textContent = "Stranger has disconnected.";
    else if (e.type === "error") line("Error: " + e.message);
  };
  ws.onclose = function () { status.textContent = "Connection lost."; };
  document.getElementById("send-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    if (!box.value.trim()) return;
    send({ type: "message", text: box.value });
    line("You: " + box.value);
    box.value = "";
  });
  document.getElementById("next").addEventListener("click", function () { log.textContent = ""; send({ type: "next" }); });
  document.getElementById("stop").addEventListener("click", function () { send({ type: "stop" }); status.textContent = "You have disconnected."; });
})();
