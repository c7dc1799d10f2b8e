using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using KestrelApp;
using Transport.Tests.Infrastructure;

namespace Transport.Tests.Http;

[Collection(nameof(ProcessWideTests))]
public sealed class ShutdownTests
{
    private static readonly TimeSpan Bounded = TimeSpan.FromSeconds(20);

    [Fact(SkipUnless = nameof(ProcessSockets.IsSupported), SkipType = typeof(ProcessSockets), Skip = ProcessSockets.Unsupported)]
    public async Task Graceful_stop_finishes_the_in_flight_request_closes_idle_connections_and_leaks_no_sockets()
    {
        const int BodySize = 1024 * 1024;
        var ct = TestContext.Current.CancellationToken;
        var baseline = ProcessSockets.Count();
        var server = await SampleServer.StartAsync();
        var clients = new List<HttpClient>();
        Socket? idle = null;
        Socket? inFlight = null;
        try
        {
            // Idle keep-alive connections: HttpClients that made a request and keep their connection pooled...
            for (var i = 0; i < 3; i++)
            {
                var client = server.CreateKeepAliveClient(maxConnections: 1);
                clients.Add(client);
                Assert.Equal(SampleHost.PlaintextBody, await client.GetByteArrayAsync("/plaintext", ct));
            }

            // ...and a raw one, which shows when the server closes idle connections.
            var endPoint = new IPEndPoint(IPAddress.Loopback, server.Port);
            idle = await RawClient.ConnectAsync(endPoint);
            await RawClient.SendAsync(idle, "GET /plaintext HTTP/1.1\r\nHost: test\r\n\r\n");
            await ReadUntilEndsWithAsync(idle, "\r\n\r\nHello, World!");

            // The in-flight request: half its body sent, and the handler already echoing (the response head is back).
            var body = RandomNumberGenerator.GetBytes(BodySize);
            inFlight = await RawClient.ConnectAsync(endPoint);
            await RawClient.SendAsync(inFlight, $"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: {BodySize}\r\n\r\n");
            await inFlight.SendAsync(body.AsMemory(0, BodySize / 2), SocketFlags.None, ct);
            var prefix = await ReadAtLeastAsync(inFlight, "HTTP/1.1 200"u8.Length);
            var reading = RawClient.ReadToFinAsync(inFlight, Bounded);

            var stopping = server.App.StopAsync(CancellationToken.None);

            // Shutdown has reached the connections once the idle one gets its FIN (a clean end, not a reset).
            var idleRest = await RawClient.ReadToFinAsync(idle, Bounded);
            Assert.Empty(idleRest);
            Assert.False(stopping.IsCompleted, "the stop finished before the in-flight request did");

            await inFlight.SendAsync(body.AsMemory(BodySize / 2), SocketFlags.None, ct);
            var response = prefix.Concat(await reading).ToArray();
            AssertEchoResponse(response, body);

            await stopping.WaitAsync(Bounded, ct);
            Assert.Equal(0, server.Counters.AbortiveCloses);
        }
        finally
        {
            idle?.Dispose();
            inFlight?.Dispose();
            foreach (var client in clients)
            {
                client.Dispose();
            }

            await server.DisposeAsync();
        }

        var remaining = await ProcessSockets.WaitForAtMostAsync(baseline, TimeSpan.FromSeconds(10));
        Assert.True(remaining <= baseline, $"{remaining} sockets open after shutdown, {baseline} before the server started");
    }

    private static void AssertEchoResponse(byte[] response, byte[] body)
    {
        var headEnd = response.AsSpan().IndexOf("\r\n\r\n"u8);
        Assert.True(headEnd > 0, "no complete response head");
        var head = Encoding.ASCII.GetString(response, 0, headEnd);
        Assert.StartsWith("HTTP/1.1 200", head, StringComparison.Ordinal);
        Assert.Contains($"Content-Length: {body.Length}", head, StringComparison.OrdinalIgnoreCase);
        var echoed = response.AsSpan(headEnd + 4);
        Assert.Equal(body.Length, echoed.Length);
        Assert.True(echoed.SequenceEqual(body), "the echoed body differs from the one sent");
    }

    private static async Task ReadUntilEndsWithAsync(Socket socket, string end)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(Bounded);
        var received = new StringBuilder();
        var buffer = new byte[4096];
        while (!received.ToString().EndsWith(end, StringComparison.Ordinal))
        {
            var read = await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
            Assert.True(read > 0, $"the server closed after: {received}");
            received.Append(Encoding.ASCII.GetString(buffer, 0, read));
        }
    }

    private static async Task<byte[]> ReadAtLeastAsync(Socket socket, int count)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(Bounded);
        var buffer = new byte[count];
        var read = 0;
        while (read < count)
        {
            var more = await socket.ReceiveAsync(buffer.AsMemory(read), SocketFlags.None, cts.Token);
            Assert.True(more > 0, $"the server closed after {read} bytes");
            read += more;
        }

        return buffer;
    }
}
