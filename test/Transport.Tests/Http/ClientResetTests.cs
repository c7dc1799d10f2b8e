using System.Net;
using System.Net.Sockets;
using System.Text;
using KestrelApp;
using Transport.Tests.Infrastructure;

namespace Transport.Tests.Http;

public sealed class ClientResetTests
{
    private static readonly TimeSpan Bounded = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task A_client_reset_in_the_middle_of_a_request_body_leaves_the_server_serving()
    {
        await using var server = await SampleServer.StartAsync();
        using var bystander = server.CreateKeepAliveClient(maxConnections: 1);
        await AssertPlaintextAsync(bystander);

        using (var socket = await RawClient.ConnectAsync(EndPoint(server)))
        {
            await RawClient.SendAsync(socket, "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n0123456789");
            // The echo handler has the request once the first body bytes come back with the response head.
            var head = await ReadAtLeastAsync(socket, "HTTP/1.1 200"u8.Length);
            Assert.StartsWith("HTTP/1.1 200", Encoding.ASCII.GetString(head), StringComparison.Ordinal);
            RawClient.Reset(socket);
        }

        Assert.True(await WaitUntilAsync(() => server.Counters.ConnectionResets >= 1), $"resets {server.Counters.ConnectionResets}");

        // The bystander's connection survived, and new connections are served.
        await AssertPlaintextAsync(bystander);
        using var fresh = server.CreateClosingClient();
        await AssertPlaintextAsync(fresh);
        LogCounters(server, "reset mid-body");
        AssertOnlyTheResetConnectionClosedAbortively(server);
    }

    [NotUnderWineFact(WinePlatform.ResetReadsAsEnd)]
    public async Task A_client_reset_while_a_large_response_is_being_sent_leaves_the_server_serving()
    {
        // Bigger than the loopback buffers can absorb while the client reads nothing: the server is still echoing.
        const int BodySize = 16 * 1024 * 1024;
        await using var server = await SampleServer.StartAsync();
        using var bystander = server.CreateKeepAliveClient(maxConnections: 1);
        await AssertPlaintextAsync(bystander);

        var socket = await RawClient.ConnectAsync(EndPoint(server));
        var head = Encoding.ASCII.GetBytes($"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: {BodySize}\r\n\r\n");
        var request = new byte[head.Length + BodySize];
        head.CopyTo(request, 0);
        using var sendCancel = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        var sending = Task.Run(async () => await socket.SendAsync(request, SocketFlags.None, sendCancel.Token), sendCancel.Token);

        // Read only part of the echo; the rest is still on its way (or held by backpressure) when the reset lands.
        var partial = await ReadAtLeastAsync(socket, 16 * 1024);
        Assert.StartsWith("HTTP/1.1 200", Encoding.ASCII.GetString(partial, 0, 12), StringComparison.Ordinal);
        Assert.False(sending.IsCompleted, "the whole request was sent before the reset; nothing was in flight");
        RawClient.Reset(socket);
        await sendCancel.CancelAsync();
        await Assert.ThrowsAnyAsync<Exception>(() => sending.WaitAsync(Bounded, TestContext.Current.CancellationToken));

        Assert.True(await WaitUntilAsync(() => server.Counters.ConnectionResets >= 1), $"resets {server.Counters.ConnectionResets}");
        await AssertPlaintextAsync(bystander);
        using var fresh = server.CreateKeepAliveClient();
        await AssertPlaintextAsync(fresh);
        LogCounters(server, "reset mid-response");
        AssertOnlyTheResetConnectionClosedAbortively(server);
    }

    private static IPEndPoint EndPoint(SampleServer server) => new(IPAddress.Loopback, server.Port);

    private static async Task AssertPlaintextAsync(HttpClient client)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(Bounded);
        var body = await client.GetByteArrayAsync("/plaintext", cts.Token);
        Assert.Equal(SampleHost.PlaintextBody, body);
    }

    /// <summary>
    /// The bystander kept its one connection (2 accepted before the fresh client, 3 after), and no connection
    /// other than the reset one was ended with an RST by the transport.
    /// </summary>
    private static void AssertOnlyTheResetConnectionClosedAbortively(SampleServer server)
    {
        Assert.Equal(3, server.Counters.ConnectionsAccepted);
        Assert.True(server.Counters.AbortiveCloses <= 1, $"abortive closes {server.Counters.AbortiveCloses}");
    }

    private static async Task<byte[]> ReadAtLeastAsync(Socket socket, int count)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(Bounded);
        var buffer = new byte[count];
        var read = await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
        while (read > 0 && read < count)
        {
            var more = await socket.ReceiveAsync(buffer.AsMemory(read), SocketFlags.None, cts.Token);
            Assert.True(more > 0, $"the server closed after {read} bytes");
            read += more;
        }

        return buffer[..read];
    }

    private static async Task<bool> WaitUntilAsync(Func<bool> condition)
    {
        for (var i = 0; i < 100 && !condition(); i++)
        {
            await Task.Delay(50, TestContext.Current.CancellationToken);
        }

        return condition();
    }

    private static void LogCounters(SampleServer server, string label)
    {
        var c = server.Counters;
        TestContext.Current.SendDiagnosticMessage(
            $"{label}: accepted={c.ConnectionsAccepted} graceful={c.GracefulCloses} abortive={c.AbortiveCloses} resets={c.ConnectionResets}");
    }
}
