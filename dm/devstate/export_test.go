package devstate

// Fixture is fixture() for the external tests.
var Fixture = fixture
