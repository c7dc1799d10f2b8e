using System.Security.Cryptography;
using Transport.Tests.Infrastructure;

namespace Transport.Tests.Http;

/// <summary>
/// Multi-megabyte bodies both ways through POST /echo, sent and received at the same time (see
/// <see cref="DuplexHttpConnection"/> for why not HttpClient), compared by length and SHA-256.
/// </summary>
public sealed class LargeBodyTests
{
    private const int BodySize = 8 * 1024 * 1024;

    [Fact]
    public async Task Multi_megabyte_bodies_echo_byte_identical_on_a_keep_alive_connection()
    {
        await using var server = await SampleServer.StartAsync();
        using var connection = await DuplexHttpConnection.ConnectAsync(server.Port);

        // Several in a row on the same connection: each body must end exactly where the next request begins.
        for (var i = 0; i < 3; i++)
        {
            var body = RandomNumberGenerator.GetBytes(BodySize + i);
            var response = await connection.EchoAsync(body, chunked: false);
            Assert.Equal(200, response.Status);
            Assert.Equal(body.Length, response.ContentLength);
            AssertSameBytes(body, response.Body);
        }

        Assert.Equal(1, server.Counters.ConnectionsAccepted);
        Assert.Equal(0, server.Counters.AbortiveCloses);
    }

    [Fact]
    public async Task Multi_megabyte_bodies_echo_byte_identical_with_connection_close()
    {
        await using var server = await SampleServer.StartAsync();

        for (var i = 0; i < 3; i++)
        {
            using var connection = await DuplexHttpConnection.ConnectAsync(server.Port);
            var body = RandomNumberGenerator.GetBytes(BodySize - i);
            var response = await connection.EchoAsync(body, chunked: false, close: true);
            Assert.Equal(200, response.Status);
            AssertSameBytes(body, response.Body);
        }

        Assert.Equal(3, server.Counters.ConnectionsAccepted);
        Assert.Equal(0, server.Counters.AbortiveCloses);
    }

    [Fact]
    public async Task A_chunked_request_body_echoes_byte_identical_and_the_connection_stays_usable()
    {
        await using var server = await SampleServer.StartAsync();
        using var connection = await DuplexHttpConnection.ConnectAsync(server.Port);
        var body = RandomNumberGenerator.GetBytes(BodySize + 12345);

        var response = await connection.EchoAsync(body, chunked: true);

        Assert.Equal(200, response.Status);
        // No Content-Length came in, so none goes out: the echo is chunked too.
        Assert.True(response.Chunked);
        AssertSameBytes(body, response.Body);

        // The same connection serves another request after a chunked exchange.
        var small = RandomNumberGenerator.GetBytes(100);
        AssertSameBytes(small, (await connection.EchoAsync(small, chunked: false)).Body);
        Assert.Equal(1, server.Counters.ConnectionsAccepted);
    }

    private static void AssertSameBytes(byte[] expected, byte[] actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        Assert.Equal(Convert.ToHexString(SHA256.HashData(expected)), Convert.ToHexString(SHA256.HashData(actual)));
    }
}
