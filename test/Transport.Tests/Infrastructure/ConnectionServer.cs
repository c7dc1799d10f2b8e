using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Transport.Winsock;

namespace Transport.Tests.Infrastructure;

/// <summary>
/// A bare Kestrel server on 127.0.0.1 port 0 whose connections run a test's own handler, with no HTTP
/// in between: what the peer sees on the wire is what the transport did.
/// </summary>
public sealed class ConnectionServer : IAsyncDisposable
{
    private ConnectionServer(WebApplication app, IPEndPoint endPoint)
    {
        App = app;
        EndPoint = endPoint;
    }

    public WebApplication App { get; }

    public IPEndPoint EndPoint { get; }

    public WinsockTransportCounters? Counters => App.Services.GetService<WinsockTransportCounters>();

    public static async Task<ConnectionServer> StartAsync(
        TransportKind transport,
        Func<ConnectionContext, Task> handler,
        Action<WinsockTransportOptions>? configure = null,
        Action<WebApplicationBuilder>? configureBuilder = null)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        configureBuilder?.Invoke(builder);
        if (transport == TransportKind.Winsock)
        {
            builder.WebHost.UseWinsockReuseTransport(configure ?? (static _ => { }));
        }

        builder.WebHost.UseKestrel(kestrel =>
            kestrel.Listen(IPAddress.Loopback, 0, listen => listen.Run(context => handler(context))));
        var app = builder.Build();
        await app.StartAsync(TestContext.Current.CancellationToken);
        var address = new Uri(app.Services.GetRequiredService<IServer>().Features.GetRequiredFeature<IServerAddressesFeature>().Addresses.Single());
        return new ConnectionServer(app, new IPEndPoint(IPAddress.Loopback, address.Port));
    }

    public async ValueTask DisposeAsync()
    {
        await App.StopAsync(CancellationToken.None);
        await App.DisposeAsync();
    }
}
