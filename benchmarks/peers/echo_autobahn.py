"""The ceiling of our stack: a bare Autobahn echo on Twisted, no JSON, no pairing.

Usage: python echo_autobahn.py PORT
"""

import sys

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor


class Echo(WebSocketServerProtocol):
    def onMessage(self, payload, isBinary):
        self.sendMessage(payload, isBinary)


factory = WebSocketServerFactory()
factory.protocol = Echo
factory.setProtocolOptions(failByDrop=False)
reactor.listenTCP(int(sys.argv[1]), factory, backlog=4096, interface="127.0.0.1")
reactor.run()
