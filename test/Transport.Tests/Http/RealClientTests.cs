using System.Net;
using System.Net.WebSockets;
using System.Security.Cryptography;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Logging;
using Transport.Tests.Infrastructure;

namespace Transport.Tests.Http;

/// <summary>
/// The clients a Kestrel user relies on, against a host on this transport (and, for comparison, on
/// Kestrel's Sockets transport): HttpClient over HTTPS with HTTP/2 (ALPN), HttpClient with HTTP/2 prior
/// knowledge (h2c), and ClientWebSocket over wss and ws.
/// </summary>
public sealed class RealClientTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    [Theory(Skip = WinePlatform.NoTlsCertificate, SkipWhen = nameof(WinePlatform.IsWine), SkipType = typeof(WinePlatform))]
    [InlineData(TransportKind.Winsock)]
    [InlineData(TransportKind.Sockets)]
    public async Task HttpClient_over_HTTPS_negotiates_HTTP2_and_multiplexes_requests_and_large_bodies(TransportKind transport)
    {
        await using var host = await Host.StartAsync(transport, tls: true);
        using var client = new HttpClient(Trusting()) { BaseAddress = host.Https, DefaultRequestVersion = HttpVersion.Version20, DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact };

        var responses = await Task.WhenAll(Enumerable.Range(0, 20).Select(_ => client.GetAsync("/plaintext", TestContext.Current.CancellationToken)));
        foreach (var response in responses)
        {
            Assert.Equal(HttpVersion.Version20, response.Version);
            Assert.Equal("Hello, World!", await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
        }

        var upload = RandomNumberGenerator.GetBytes(4 * 1024 * 1024);
        using var echoed = await client.PostAsync("/echo", new ByteArrayContent(upload), TestContext.Current.CancellationToken);
        Assert.Equal(HttpVersion.Version20, echoed.Version);
        var back = await echoed.Content.ReadAsByteArrayAsync(TestContext.Current.CancellationToken);
        Assert.True(upload.AsSpan().SequenceEqual(back), "the 4 MiB body came back altered");
        host.AssertServedByTheTransport(transport);
    }

    [Theory]
    [InlineData(TransportKind.Winsock)]
    [InlineData(TransportKind.Sockets)]
    public async Task HttpClient_speaks_HTTP2_with_prior_knowledge_over_cleartext(TransportKind transport)
    {
        await using var host = await Host.StartAsync(transport, tls: false);
        using var client = new HttpClient { BaseAddress = host.H2c, DefaultRequestVersion = HttpVersion.Version20, DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact };

        for (var i = 0; i < 10; i++)
        {
            using var response = await client.GetAsync("/plaintext", TestContext.Current.CancellationToken);
            Assert.Equal(HttpVersion.Version20, response.Version);
            Assert.Equal("Hello, World!", await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
        }

        host.AssertServedByTheTransport(transport);
    }

    [Theory(Skip = WinePlatform.NoTlsCertificate, SkipWhen = nameof(WinePlatform.IsWine), SkipType = typeof(WinePlatform))]
    [InlineData(TransportKind.Winsock)]
    [InlineData(TransportKind.Sockets)]
    public async Task ClientWebSocket_over_wss_echoes_every_message(TransportKind transport)
    {
        await using var host = await Host.StartAsync(transport, tls: true);
        using var socket = new ClientWebSocket();
        socket.Options.RemoteCertificateValidationCallback = (_, certificate, _, _) => TestCertificate.IsServer(certificate);
        await socket.ConnectAsync(new Uri($"wss://127.0.0.1:{host.Https.Port}/ws"), TestContext.Current.CancellationToken);
        await EchoAsync(socket);
        host.AssertServedByTheTransport(transport);
    }

    [Theory]
    [InlineData(TransportKind.Winsock)]
    [InlineData(TransportKind.Sockets)]
    public async Task ClientWebSocket_over_ws_echoes_every_message(TransportKind transport)
    {
        await using var host = await Host.StartAsync(transport, tls: false);
        using var socket = new ClientWebSocket();
        await socket.ConnectAsync(new Uri($"ws://127.0.0.1:{host.Http1.Port}/ws"), TestContext.Current.CancellationToken);
        await EchoAsync(socket);
        host.AssertServedByTheTransport(transport);
    }

    /// <summary>100 binary messages of up to 48 KiB, each echoed whole; then the close handshake.</summary>
    private static async Task EchoAsync(ClientWebSocket socket)
    {
        var ct = TestContext.Current.CancellationToken;

        var buffer = new byte[64 * 1024];
        for (var i = 0; i < 100; i++)
        {
            var message = RandomNumberGenerator.GetBytes(1 + (i * 617 % (48 * 1024)));
            await socket.SendAsync(message, WebSocketMessageType.Binary, endOfMessage: true, ct);
            var received = 0;
            ValueWebSocketReceiveResult result;
            do
            {
                result = await socket.ReceiveAsync(buffer.AsMemory(received), ct);
                received += result.Count;
            }
            while (!result.EndOfMessage);

            Assert.True(message.AsSpan().SequenceEqual(buffer.AsSpan(0, received)), $"message {i} came back altered");
        }

        await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", ct);
        Assert.Equal(WebSocketCloseStatus.NormalClosure, socket.CloseStatus);
    }

    private static SocketsHttpHandler Trusting() => new()
    {
        SslOptions = { RemoteCertificateValidationCallback = (_, certificate, _, _) => TestCertificate.IsServer(certificate) },
    };

    /// <summary>A host with an HTTPS endpoint (HTTP/1.1 and HTTP/2), an h2c endpoint, /plaintext, POST /echo and a WebSocket echo at /ws.</summary>
    private sealed class Host : IAsyncDisposable
    {
        private readonly WebApplication _app;
        private readonly Uri? _https;

        private Host(WebApplication app, Uri? https, Uri h2c, Uri http1)
        {
            _app = app;
            _https = https;
            H2c = h2c;
            Http1 = http1;
        }

        public Uri Https => _https ?? throw new InvalidOperationException("This host has no HTTPS endpoint.");

        public Uri H2c { get; }

        public Uri Http1 { get; }

        public static async Task<Host> StartAsync(TransportKind transport, bool tls)
        {
            var builder = WebApplication.CreateSlimBuilder();
            builder.Logging.ClearProviders();
            if (transport == TransportKind.Winsock)
            {
                builder.WebHost.UseWinsockReuseTransport();
            }

            builder.WebHost.UseKestrel(kestrel =>
            {
                if (tls)
                {
                    kestrel.Listen(IPAddress.Loopback, 0, listen =>
                    {
                        listen.Protocols = HttpProtocols.Http1AndHttp2;
                        listen.UseHttps(TestCertificate.Server);
                    });
                }

                kestrel.Listen(IPAddress.Loopback, 0, listen => listen.Protocols = HttpProtocols.Http2);
                kestrel.Listen(IPAddress.Loopback, 0, listen => listen.Protocols = HttpProtocols.Http1);
            });
            var app = builder.Build();
            app.UseWebSockets();
            app.MapGet("/plaintext", () => "Hello, World!");
            app.MapPost("/echo", static async (HttpContext context) =>
            {
                // The whole body first, then the response: not a duplex stream.
                using var body = new MemoryStream();
                await context.Request.Body.CopyToAsync(body, context.RequestAborted);
                context.Response.ContentLength = body.Length;
                await context.Response.Body.WriteAsync(body.GetBuffer().AsMemory(0, (int)body.Length), context.RequestAborted);
            });
            app.Map("/ws", static async (HttpContext context) =>
            {
                using var socket = await context.WebSockets.AcceptWebSocketAsync();
                var buffer = new byte[64 * 1024];
                while (true)
                {
                    var result = await socket.ReceiveAsync(buffer, context.RequestAborted);
                    if (result.MessageType == WebSocketMessageType.Close)
                    {
                        await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "bye", context.RequestAborted);
                        return;
                    }

                    await socket.SendAsync(buffer.AsMemory(0, result.Count), result.MessageType, result.EndOfMessage, context.RequestAborted);
                }
            });
            await app.StartAsync(TestContext.Current.CancellationToken);
            // In the order they were added: HTTPS (when there is TLS), h2c, HTTP/1.1.
            var addresses = app.Urls.Select(url => new Uri(url)).ToList();
            var cleartext = addresses.Where(u => u.Scheme == "http").ToList();
            return new Host(app, addresses.SingleOrDefault(u => u.Scheme == "https"), cleartext[0], cleartext[1]);
        }

        /// <summary>On the Winsock transport, the connections really went through it.</summary>
        public void AssertServedByTheTransport(TransportKind transport)
        {
            if (transport == TransportKind.Winsock)
            {
                Assert.True(_app.Services.GetService(typeof(Transport.Winsock.WinsockTransportCounters)) is Transport.Winsock.WinsockTransportCounters { ConnectionsAccepted: > 0 });
            }
        }

        public async ValueTask DisposeAsync()
        {
            await _app.StopAsync(CancellationToken.None);
            await _app.DisposeAsync();
        }
    }
}
