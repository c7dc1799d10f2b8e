using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Transport.Tests.Infrastructure;
using Transport.Winsock;

namespace Transport.Tests.Http;

/// <summary>
/// A client that sends its request and half-closes at once. The endpoint answers a second later, so the
/// FIN always arrives while the request is in flight.
/// </summary>
public sealed class HalfCloseOptionTests
{
    private static readonly TimeSpan AnswerDelay = TimeSpan.FromSeconds(1);

    [Fact]
    public async Task Off_a_client_FIN_aborts_the_request_in_flight_as_in_Kestrel()
    {
        await using var host = await SlowHost.StartAsync(allowHalfClose: false);

        var response = await RequestThenHalfCloseAsync(host.EndPoint);

        Assert.DoesNotContain("answered", response, StringComparison.Ordinal);
        Assert.True(await Eventually.TrueAsync(() => host.Aborted, TimeSpan.FromSeconds(10)), "the request was not aborted");
    }

    [Fact]
    public async Task On_the_request_in_flight_is_answered_in_full_then_the_connection_ends_gracefully()
    {
        await using var host = await SlowHost.StartAsync(allowHalfClose: true);

        // ReadToFinAsync throws on an RST: the answer is followed by a FIN.
        var response = await RequestThenHalfCloseAsync(host.EndPoint);

        Assert.StartsWith("HTTP/1.1 200 OK", response, StringComparison.Ordinal);
        Assert.EndsWith("answered", response, StringComparison.Ordinal);
        Assert.False(host.Aborted);
        var counters = host.Counters;
        Assert.True(await Eventually.TrueAsync(() => counters.GracefulCloses == 1, TimeSpan.FromSeconds(10)), Eventually.Describe(counters));
        Assert.Equal(0, counters.AbortiveCloses);
    }

    private static async Task<string> RequestThenHalfCloseAsync(IPEndPoint endPoint)
    {
        using var socket = await RawClient.ConnectAsync(endPoint);
        await RawClient.SendAsync(socket, "GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n");
        socket.Shutdown(SocketShutdown.Send);
        try
        {
            return Encoding.ASCII.GetString(await RawClient.ReadToFinAsync(socket, TimeSpan.FromSeconds(15)));
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionReset)
        {
            return "(reset)";
        }
    }

    private sealed class SlowHost : IAsyncDisposable
    {
        private readonly WebApplication _app;
        private volatile bool _aborted;

        private SlowHost(WebApplication app) => _app = app;

        public IPEndPoint EndPoint { get; private set; } = null!;

        public bool Aborted => _aborted;

        public WinsockTransportCounters Counters => _app.Services.GetRequiredService<WinsockTransportCounters>();

        public static async Task<SlowHost> StartAsync(bool allowHalfClose)
        {
            var builder = WebApplication.CreateSlimBuilder();
            builder.Logging.ClearProviders();
            builder.WebHost.UseWinsockReuseTransport(options => options.AllowHalfClose = allowHalfClose);
            builder.WebHost.UseUrls("http://127.0.0.1:0");
            var app = builder.Build();
            var host = new SlowHost(app);
            app.MapGet("/slow", async context =>
            {
                try
                {
                    await Task.Delay(AnswerDelay, context.RequestAborted);
                }
                catch (OperationCanceledException)
                {
                    host._aborted = true;
                    return;
                }

                context.Response.ContentLength = "answered".Length;
                await context.Response.WriteAsync("answered", context.RequestAborted);
            });
            await app.StartAsync(TestContext.Current.CancellationToken);
            var address = new Uri(app.Services.GetRequiredService<IServer>().Features.GetRequiredFeature<IServerAddressesFeature>().Addresses.Single());
            host.EndPoint = new IPEndPoint(IPAddress.Loopback, address.Port);
            return host;
        }

        public async ValueTask DisposeAsync()
        {
            await _app.StopAsync(CancellationToken.None);
            await _app.DisposeAsync();
        }
    }
}
