using KestrelApp;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Transport.Winsock;

namespace Transport.Tests.Infrastructure;

/// <summary>The sample app's real host, on real Kestrel, on 127.0.0.1 with a port the OS picks.</summary>
public sealed class SampleServer : IAsyncDisposable
{
    private SampleServer(WebApplication app, Uri baseAddress)
    {
        App = app;
        BaseAddress = baseAddress;
    }

    public WebApplication App { get; }

    public Uri BaseAddress { get; }

    public int Port => BaseAddress.Port;

    /// <summary>The transport's counters; only on the Winsock transport.</summary>
    public WinsockTransportCounters Counters => App.Services.GetRequiredService<WinsockTransportCounters>();

    public static async Task<SampleServer> StartAsync(
        TransportKind transport = TransportKind.Winsock,
        Action<WinsockTransportOptions>? configure = null,
        Action<WebApplicationBuilder>? configureBuilder = null)
    {
        var builder = SampleHost.CreateBuilder(
            ["--transport", transport.ToString().ToLowerInvariant(), "--urls", "http://127.0.0.1:0"],
            configure);
        builder.Logging.ClearProviders();
        configureBuilder?.Invoke(builder);
        var app = builder.Build();
        SampleHost.MapEndpoints(app);
        await app.StartAsync(TestContext.Current.CancellationToken);
        var address = SampleHost.ServerAddresses(app).Single();
        return new SampleServer(app, new Uri(address));
    }

    /// <summary>A client that opens a new TCP connection for every request (Connection: close).</summary>
    public HttpClient CreateClosingClient()
    {
        var client = new HttpClient(new SocketsHttpHandler { PooledConnectionLifetime = TimeSpan.Zero }) { BaseAddress = BaseAddress };
        client.DefaultRequestHeaders.ConnectionClose = true;
        return client;
    }

    /// <summary>
    /// Sends <paramref name="requests"/> GET /plaintext requests in a row, each on a new connection
    /// (Connection: close), and checks every body.
    /// </summary>
    public async Task GetPlaintextOnNewConnectionsAsync(int requests)
    {
        using var client = CreateClosingClient();
        for (var i = 0; i < requests; i++)
        {
            Assert.Equal(SampleHost.PlaintextBody, await client.GetByteArrayAsync("/plaintext", TestContext.Current.CancellationToken));
        }
    }

    /// <summary>A client that keeps its connections alive between requests.</summary>
    public HttpClient CreateKeepAliveClient(int maxConnections = int.MaxValue)
        => new(new SocketsHttpHandler { MaxConnectionsPerServer = maxConnections }) { BaseAddress = BaseAddress };

    public async ValueTask DisposeAsync()
    {
        await App.StopAsync(CancellationToken.None);
        await App.DisposeAsync();
    }
}
