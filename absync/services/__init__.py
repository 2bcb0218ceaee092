"""Operations shared by the web API, the console (through the API) and the CLI."""
