from twisted.application.service import ServiceMaker

roulette = ServiceMaker("roulette", "roulette.tap", "A random one-to-one chat server.", "roulette")
