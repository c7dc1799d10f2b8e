using KestrelApp;

// dotnet run --project samples/KestrelApp [-- --transport winsock|sockets] [--urls http://127.0.0.1:5000]
var builder = SampleHost.CreateBuilder(args);
var app = builder.Build();
SampleHost.MapEndpoints(app);
app.Run();
